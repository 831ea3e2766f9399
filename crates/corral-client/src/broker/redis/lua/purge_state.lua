-- purge_state.lua: deletes one batch of a queue's tasks in one state, with
-- their records.
--
-- Pending tasks are taken from the front of the pending list (its oldest
-- end), then from the priorities' set beside it; entries that are not pending tasks (raw entries, stale ids) go
-- with them, but only records of pending tasks are deleted. Scheduled and
-- retrying tasks share the scheduled set: the batch walks it from
-- `offset` and deletes those in the state asked. Finished tasks are taken
-- oldest first. Waiting tasks leave their tenant's count of queued tasks;
-- then the queue's due entry is set exactly (settle). The caller repeats
-- until the answer says the state is empty, so Redis is never held for
-- longer than one batch.
--
-- KEYS[1..11] the queue's pending, active, scheduled, completed, dead,
--             task, meta, progress, error, cancelled, retrying
-- KEYS[12] queued    (string) the tenant's count of queued tasks
-- KEYS[13] due       (zset)   the tenant's due index
-- KEYS[14] queues    (set)    the tenant's queue names
--
-- ARGV[1] the state: p, s, r, c, d or x
-- ARGV[2] most entries looked at in this batch
-- ARGV[3] the offset into the scheduled set to start at (s and r)
-- ARGV[4] the queue's name, as the tenant's sets hold it
-- ARGV[5] how long completed tasks are kept (µs)
-- ARGV[6] how long dead and cancelled tasks are kept (µs)
--
-- Returns {deleted, next}: next is the offset to go on from (s and r), 0
-- to go on (other states), or -1 when the state is empty

local k_pending, k_scheduled = KEYS[1], KEYS[3]
local k_task, k_meta, k_progress, k_error = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local state, batch, offset = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local sets = {c = KEYS[4], d = KEYS[5], x = KEYS[10]}

local entries
local next_at = 0
if state == 'p' then
    entries = redis.call('LRANGE', k_pending, -batch, -1)
    if #entries > 0 then
        redis.call('LTRIM', k_pending, 0, -(#entries + 1))
    end
    if #entries < batch then
        local popped = redis.call('ZPOPMIN', prio_key(k_pending), batch - #entries)
        for i = 1, #popped, 2 do
            entries[#entries + 1] = popped[i]
        end
    end
    if #entries < batch then
        next_at = -1
    end
elseif state == 's' or state == 'r' then
    entries = redis.call('ZRANGE', k_scheduled, offset, offset + batch - 1)
    if #entries < batch then
        next_at = -1
    end
else
    entries = redis.call('ZRANGE', sets[state], 0, batch - 1)
    if #entries < batch then
        next_at = -1
    end
end

local ids = {}
local found = records_by_id(k_task, k_meta, entries)
for _, e in ipairs(entries) do
    local m = found[e]
    if m and m.state == state then
        ids[#ids + 1] = e
    end
end
if #ids > 0 then
    if state == 's' or state == 'r' then
        redis.call('ZREM', k_scheduled, unpack(ids))
        next_at = next_at == -1 and -1 or offset + batch - #ids
    elseif sets[state] then
        redis.call('ZREM', sets[state], unpack(ids))
    end
    if state == 'p' or state == 's' or state == 'r' then
        unqueue(KEYS[12], #ids)
    end
    if state == 'r' then
        unretry(KEYS[11], #ids)
    end
    forget_all(k_task, k_meta, k_progress, k_error, ids)
elseif (state == 's' or state == 'r') and next_at ~= -1 then
    next_at = offset + batch
end
settle(KEYS[13], KEYS[14], {
    name = ARGV[4], pending = k_pending, active = KEYS[2], scheduled = k_scheduled,
    completed = KEYS[4], dead = KEYS[5], cancelled = KEYS[10], task = k_task,
    meta = k_meta,
}, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {#ids, next_at}
