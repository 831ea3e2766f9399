-- update.lua: saves a leased task's checkpoint, if the lease still holds.
--
-- KEYS[1] meta      (hash)
-- KEYS[2] progress  (hash)
--
-- ARGV[1] id
-- ARGV[2] fencing token the caller holds
-- ARGV[3] now (µs)
-- ARGV[4] the checkpoint's handler index
-- ARGV[5] checkpoint JSON
--
-- Returns 0 saved
--         1 lease lost: the task is not active under this token

local id = ARGV[1]
local m = meta_get(KEYS[1], id)
if not m or m.state ~= 'a' or m.token ~= tonumber(ARGV[2]) then
    return 1
end
m.updated = ARGV[3]
m.handler = ARGV[4]
meta_put(KEYS[1], id, m)
redis.call('HSET', KEYS[2], id, ARGV[5])
return 0
