-- dead.lua: the newest dead tasks of one queue, with their records.
--
-- KEYS[1] dead      (zset)
-- KEYS[2] task      (hash)
-- KEYS[3] meta      (hash)
-- KEYS[4] progress  (hash)
-- KEYS[5] error     (hash)
--
-- ARGV[1] most tasks to return
--
-- Returns 5 values per task, newest first:
--         id, task JSON or false, metadata or false,
--         checkpoint JSON or false, error JSON or false

local out = {}
local limit = tonumber(ARGV[1])
if limit < 1 then
    return out
end
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, limit - 1)) do
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', KEYS[2], id)
    out[#out + 1] = redis.call('HGET', KEYS[3], id)
    out[#out + 1] = redis.call('HGET', KEYS[4], id)
    out[#out + 1] = redis.call('HGET', KEYS[5], id)
end
return out
