-- heartbeat.lua: extends the leases a worker holds on one queue's tasks.
--
-- KEYS[1] active  (zset)
-- KEYS[2] task    (hash)   id -> record (see common.lua)
-- KEYS[3] running (zset)   the tenant's active ids: extended alongside
-- KEYS[4] meta    (hash)   split records' metadata (see common.lua)
--
-- ARGV[1] new lease expiry (µs)
-- ARGV[2] n; then 2 values per lease: id, token
--
-- Returns the ids whose lease is no longer held (not active under that
-- token); the worker must abandon them.

local lost = {}
local n = tonumber(ARGV[2])
if n == 0 then
    return lost
end
local ids = {}
for i = 0, n - 1 do
    ids[i + 1] = ARGV[3 + i * 2]
end
local metas = records(KEYS[2], KEYS[4], ids)
local zadd_args = {}
for i = 0, n - 1 do
    local id, token = ids[i + 1], tonumber(ARGV[4 + i * 2])
    local m = metas[i + 1]
    if leased(m, token) then
        zadd_args[#zadd_args + 1] = ARGV[1]
        zadd_args[#zadd_args + 1] = id
    else
        lost[#lost + 1] = id
    end
end
if #zadd_args > 0 then
    redis.call('ZADD', KEYS[1], unpack(zadd_args))
    redis.call('ZADD', KEYS[3], unpack(zadd_args))
end
return lost
