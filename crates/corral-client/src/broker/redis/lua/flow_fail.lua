-- flow_fail.lua: fails a ready workflow step before it is enqueued (its
-- input would be too large), as if its task had died: flow_step_ended
-- applies the workflow's policy. Only while its ready entry is there, so
-- a step another caller enqueued meanwhile is left alone.
--
-- KEYS[1] flow-ready (zset)  the tenant's ready workflow steps
-- KEYS[2] flow       (hash)  the workflow's record
-- KEYS[3] flows      (zset)  the tenant's workflows by when they ended
--
-- ARGV[1] the workflow's id
-- ARGV[2] the step's index
-- ARGV[3] the step's task id
-- ARGV[4] the error (JSON)
-- ARGV[5] now (µs)
--
-- Returns 1 failed, 0 not ready any more (nothing changed)

local flow_id, i, id = ARGV[1], ARGV[2], ARGV[3]
if redis.call('ZREM', KEYS[1], flow_id .. ':' .. i) == 0
    or redis.call('HGET', KEYS[2], 'x:' .. i) ~= 'q' then
    return 0
end
redis.call('HSET', KEYS[2], 'x:' .. i, 'e' .. id)
flow_step_ended(KEYS[2], KEYS[1], KEYS[3], flow_id, i, id, false, ARGV[4], ARGV[5])
return 1
