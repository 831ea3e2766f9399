-- read.lua: one task's whole record, read at one instant.
--
-- KEYS[1] task      (hash)
-- KEYS[2] meta      (hash)
-- KEYS[3] progress  (hash)
-- KEYS[4] error     (hash)
--
-- ARGV[1] id
--
-- Returns false if the queue holds no such task, else
--         {task JSON, metadata, checkpoint JSON or false, error JSON or false}

local id = ARGV[1]
local meta = redis.call('HGET', KEYS[2], id)
if not meta then
    return false
end
return {
    redis.call('HGET', KEYS[1], id),
    meta,
    redis.call('HGET', KEYS[3], id),
    redis.call('HGET', KEYS[4], id),
}
