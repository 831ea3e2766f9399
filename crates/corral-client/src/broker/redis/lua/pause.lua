-- pause.lua: pauses or resumes one of a tenant's queues.
--
-- Only a queue that holds tasks can be paused; names paused before whose
-- queue has gone since are dropped in the same step, so the paused set
-- never holds more names than the tenant has queues (plus this one).
--
-- KEYS[1] queues  (set) the tenant's queue names
-- KEYS[2] paused  (set) the tenant's paused queue names
--
-- ARGV[1] the queue's name
-- ARGV[2] 1 to pause, 0 to resume
--
-- Returns 0 done, 1 no such queue (pausing only)

local name = ARGV[1]
if ARGV[2] == '0' then
    redis.call('SREM', KEYS[2], name)
    return 0
end
if redis.call('SISMEMBER', KEYS[1], name) == 0 then
    return 1
end
local gone = redis.call('SDIFF', KEYS[2], KEYS[1])
if #gone > 0 then
    redis.call('SREM', KEYS[2], unpack(gone))
end
redis.call('SADD', KEYS[2], name)
return 0
