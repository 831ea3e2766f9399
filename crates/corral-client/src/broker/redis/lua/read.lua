-- read.lua: one task's whole record, read at one instant.
--
-- KEYS[1] task      (hash) id -> record (see common.lua)
-- KEYS[2] meta      (hash) split records' metadata (see common.lua)
-- KEYS[3] progress  (hash)
-- KEYS[4] error     (hash)
--
-- ARGV[1] id
--
-- Returns false if the queue holds no such task, else
--         {record, checkpoint JSON or false, error JSON or false}

local id = ARGV[1]
local m = records(KEYS[1], KEYS[2], {id})[1]
if not m then
    return false
end
return {
    meta_encode(m),
    redis.call('HGET', KEYS[3], id),
    redis.call('HGET', KEYS[4], id),
}
