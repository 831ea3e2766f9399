-- dead.lua: the newest dead tasks of one queue, with their records.
--
-- KEYS[1] dead      (zset)
-- KEYS[2] task      (hash) id -> record (see common.lua)
-- KEYS[3] meta      (hash) split records' metadata (see common.lua)
-- KEYS[4] progress  (hash)
-- KEYS[5] error     (hash)
--
-- ARGV[1] most tasks to return
--
-- Returns 4 values per task, newest first:
--         id, record or false, checkpoint JSON or false, error JSON or false

local out = {}
local limit = tonumber(ARGV[1])
if limit < 1 then
    return out
end
local ids = redis.call('ZREVRANGE', KEYS[1], 0, limit - 1)
if #ids == 0 then
    return out
end
local found = records(KEYS[2], KEYS[3], ids)
for i, id in ipairs(ids) do
    out[#out + 1] = id
    out[#out + 1] = found[i] and meta_encode(found[i]) or false
    out[#out + 1] = redis.call('HGET', KEYS[4], id)
    out[#out + 1] = redis.call('HGET', KEYS[5], id)
end
return out
