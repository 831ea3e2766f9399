-- cancel.lua: cancels one task of a queue.
--
-- A waiting task (pending, scheduled, retrying) leaves its line and its
-- tenant's count of queued tasks and is cancelled at once: final, with a
-- `cancelled` error, kept like a dead task. An active task is marked
-- (state k): its lease holds on, every later outcome but success ends it
-- cancelled (ack.lua), and an expired lease cancels it (maintain.lua); the
-- caller tells the worker named in the answer. Removing a pending id walks
-- the pending list (LREM; bounded by the tenant's own queued tasks), or
-- takes it out of its priority's set (see `pend` in common.lua). A
-- workflow step cancelled here fails its workflow (flow_step_failed; the
-- tenant's keys are named after KEYS[6]).
--
-- KEYS[1] pending    (list)
-- KEYS[2] scheduled  (zset)
-- KEYS[3] cancelled  (zset)
-- KEYS[4] meta       (hash)   split records' metadata (see common.lua)
-- KEYS[5] error      (hash)
-- KEYS[6] queued     (string) the tenant's count of queued tasks
-- KEYS[7] retrying   (string) the queue's count of retrying tasks
-- KEYS[8] due        (zset)   the tenant's due index
-- KEYS[9] task       (hash)   id -> record (see common.lua)
--
-- ARGV[1] the task id
-- ARGV[2] now (µs)
-- ARGV[3] how long cancelled tasks are kept (µs)
-- ARGV[4] the queue's name, as the tenant's sets hold it
--
-- Returns {0}            cancelled now
--         {1}            no such task in this queue
--         {2, state}     already final (c, d or x)
--         {3, worker}    running: marked, the worker must be told

local id, now = ARGV[1], ARGV[2]
local m = meta_get(KEYS[9], KEYS[4], id)
if not m then
    return {1}
end
if m.state == 'c' or m.state == 'd' or m.state == 'x' then
    return {2, m.state}
end
if m.state == 'a' or m.state == 'k' then
    if m.state == 'a' then
        m.state = 'k'
        meta_put(KEYS[9], KEYS[4], id, m)
    end
    return {3, record_worker(m)}
end
if m.state == 'p' then
    unpend(KEYS[1], id, m.priority)
else
    redis.call('ZREM', KEYS[2], id)
    if m.state == 'r' then
        unretry(KEYS[7], 1)
    end
end
unqueue(KEYS[6], 1)
m.state = 'x'
m.updated = now
meta_put(KEYS[9], KEYS[4], id, m)
local error = cancel_error('the task was cancelled before it ran', nil)
redis.call('HSET', KEYS[5], id, error)
flow_step_failed(string.sub(KEYS[6], 1, -(#':queued' + 1)), m, id, error, now)
redis.call('ZADD', KEYS[3], now, id)
due_by(KEYS[8], ARGV[4], tonumber(now) + tonumber(ARGV[3]))
return {0}
