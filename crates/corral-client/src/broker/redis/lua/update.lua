-- update.lua: saves a leased task's checkpoint, if the lease still holds,
-- and bills the handler calls it adds to the tenant's usage of the day.
--
-- KEYS[1] task      (hash) id -> record (see common.lua)
-- KEYS[2] progress  (hash)
-- KEYS[3] usage     (hash) the tenant's usage of the day
-- KEYS[4] meta      (hash) split records' metadata (see common.lua)
--
-- ARGV[1] id
-- ARGV[2] fencing token the caller holds
-- ARGV[3] now (µs)
-- ARGV[4] the checkpoint's handler index
-- ARGV[5] checkpoint JSON
-- ARGV[6] how long a day's usage is kept (s)
-- ARGV[7..11] the calls this checkpoint adds: calls, fuel, wall_us,
--         instantiate_us, peak_memory_bytes
--
-- Returns 0 saved
--         1 lease lost: the task is not active under this token

local id = ARGV[1]
local m = meta_get(KEYS[1], KEYS[4], id)
if not leased(m, tonumber(ARGV[2])) then
    return 1
end
m.updated = ARGV[3]
m.handler = ARGV[4]
meta_put(KEYS[1], KEYS[4], id, m)
redis.call('HSET', KEYS[2], id, ARGV[5])
local u = {}
add_calls(u, 7)
bill(KEYS[3], u, ARGV[6])
return 0
