-- delete.lua: deletes one task of a queue, with its record, in any state
-- but active.
--
-- The id leaves whichever line or set its state puts it in (a pending id of
-- priority 0 is removed from the list with LREM: bounded by the tenant's
-- own queued tasks), a waiting task leaves its tenant's count of queued tasks, and
-- the queue's due entry is set exactly (settle), which takes the queue out
-- of the tenant's queue set when this was its last record.
--
-- KEYS[1] pending    (list)
-- KEYS[2] active     (zset)
-- KEYS[3] scheduled  (zset)
-- KEYS[4] completed  (zset)
-- KEYS[5] dead       (zset)
-- KEYS[6] task       (hash)   id -> record (see common.lua)
-- KEYS[7] meta       (hash)   split records' metadata (see common.lua)
-- KEYS[8] progress   (hash)
-- KEYS[9] error      (hash)
-- KEYS[10] cancelled (zset)
-- KEYS[11] retrying  (string)
-- KEYS[12] queued    (string) the tenant's count of queued tasks
-- KEYS[13] due       (zset)   the tenant's due index
-- KEYS[14] queues    (set)    the tenant's queue names
--
-- ARGV[1] the task id
-- ARGV[2] the queue's name, as the tenant's sets hold it
-- ARGV[3] how long completed tasks are kept (µs)
-- ARGV[4] how long dead and cancelled tasks are kept (µs)
--
-- Returns 0 deleted, 1 no such task in this queue, 2 active (not deleted)

local id = ARGV[1]
local m = meta_get(KEYS[6], KEYS[7], id)
if not m then
    return 1
end
local s = m.state
if s == 'a' or s == 'k' then
    return 2
end
if s == 'p' then
    unpend(KEYS[1], id, m.priority)
elseif s == 's' or s == 'r' then
    redis.call('ZREM', KEYS[3], id)
elseif s == 'c' then
    redis.call('ZREM', KEYS[4], id)
elseif s == 'd' then
    redis.call('ZREM', KEYS[5], id)
elseif s == 'x' then
    redis.call('ZREM', KEYS[10], id)
end
if s == 'p' or s == 's' or s == 'r' then
    unqueue(KEYS[12], 1)
end
if s == 'r' then
    unretry(KEYS[11], 1)
end
forget_all(KEYS[6], KEYS[7], KEYS[8], KEYS[9], {id})
settle(KEYS[13], KEYS[14], {
    name = ARGV[2], pending = KEYS[1], active = KEYS[2], scheduled = KEYS[3],
    completed = KEYS[4], dead = KEYS[5], cancelled = KEYS[10], task = KEYS[6],
    meta = KEYS[7],
}, tonumber(ARGV[3]), tonumber(ARGV[4]))
return 0
