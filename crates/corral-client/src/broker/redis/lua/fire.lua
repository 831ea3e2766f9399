-- fire.lua: fires one tick of a schedule: moves its stored tick on and,
-- when asked, stores the tick's task, in one atomic step that first checks
-- the stored tick is still the one the caller planned from. Every worker's
-- maintenance may try the same tick; exactly one moves it, and so exactly
-- one task is stored per tick, whatever crashes or restarts happen.
--
-- The task is stored as enqueue.lua stores a ready task, within the
-- tenant's max_queued and max_queues; a task they refuse is not stored but
-- the tick still moves on (a schedule does not pile up refused ticks).
--
-- KEYS[1] sched-next (zset)   the tenant's schedules' next ticks
-- KEYS[2] pending    (list)   the task's queue
-- KEYS[3] task       (hash)   id -> record (see common.lua)
-- KEYS[4] queues     (set)    the tenant's queue names
-- KEYS[5] queued     (string) the tenant's count of queued tasks
-- KEYS[6] cap        (string) the tenant's concurrency cap
-- KEYS[7] meta       (hash)   split records' metadata (see common.lua)
--
-- ARGV[1] the schedule's name
-- ARGV[2] the tick planned from (µs)
-- ARGV[3] the next tick (µs), or empty when there is none
-- ARGV[4] the task's id, or empty: no task for this tick
-- ARGV[5] the task's record (packed by Rust; state p)
-- ARGV[6] the tenant's max_queued
-- ARGV[7] the tenant's max_queues
-- ARGV[8] the queue's name, as the tenant's queue set holds it
-- ARGV[9] the tenant's max_concurrency, or empty
--
-- Returns 0 the stored tick is not ARGV[2] (another worker fired it, or
--           the schedule was replaced or removed): nothing changed
--         1 fired, the task stored
--         2 fired, no task asked for
--         3 fired, the task refused: the tenant's max_queued
--         4 fired, the task refused: the tenant's max_queues

local name = ARGV[1]
local stored = redis.call('ZSCORE', KEYS[1], name)
if not stored or tonumber(stored) ~= tonumber(ARGV[2]) then
    return 0
end
if ARGV[3] ~= '' then
    redis.call('ZADD', KEYS[1], ARGV[3], name)
else
    redis.call('ZREM', KEYS[1], name)
end
local id = ARGV[4]
if id == '' then
    return 2
end
local queued = tonumber(redis.call('GET', KEYS[5]) or '0') or 0
if queued + 1 > tonumber(ARGV[6]) then
    return 3
end
local queue = ARGV[8]
if redis.call('SISMEMBER', KEYS[4], queue) == 0 then
    if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[7]) then
        return 4
    end
    redis.call('SADD', KEYS[4], queue)
end
redis.call('INCRBY', KEYS[5], 1)
if ARGV[9] ~= '' then
    redis.call('SET', KEYS[6], ARGV[9])
end
local writes = record_writes()
record_new(writes, id, ARGV[5])
record_flush(writes, KEYS[3], KEYS[7])
pend(KEYS[2], {id}, {meta_priority(ARGV[5])}, false)
return 1
