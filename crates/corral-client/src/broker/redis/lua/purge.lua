-- purge.lua: deletes one queue whole, every task in it whatever its state,
-- and takes it out of its tenant's accounts and due index.
--
-- The tenant's count of queued tasks loses the queue's pending, scheduled
-- and retrying tasks, counted from their records (so raw entries, never
-- counted, are not subtracted); the queue leaves the tenant's queue set.
-- Walks the queue's records, so it costs in proportion to the queue: an
-- operator's tool, not a hot path.
--
-- KEYS[1..11] the queue's pending, active, scheduled, completed, dead,
--             task, meta, progress, error, cancelled, retrying
-- KEYS[12] queues    (set)    the tenant's queue names
-- KEYS[13] queued    (string) the tenant's count of queued tasks
-- KEYS[14] due       (zset)   the tenant's due index
-- KEYS[15] paused    (set)    the tenant's paused queue names
--
-- ARGV[1] the queue's name, as the tenant's queue set holds it
--
-- Returns the number of queued tasks taken off the tenant's count.

-- Both forms of a record (see common.lua) start with the state byte: split
-- ones are counted from the `meta` hash, and the JSON they keep in the
-- `task` hash (which a raw push may start with any byte) is not counted.
local waiting = {p = true, s = true, r = true}
local splits = redis.call('EXISTS', KEYS[7]) == 1
local queued = 0
for _, k in ipairs({KEYS[6], KEYS[7]}) do
    local cursor = '0'
    repeat
        local page = redis.call('HSCAN', k, cursor, 'COUNT', 1000)
        cursor = page[1]
        local fields = page[2]
        for i = 2, #fields, 2 do
            if waiting[string.sub(fields[i], 1, 1)] and (k == KEYS[7] or not splits
                or redis.call('HEXISTS', KEYS[7], fields[i - 1]) == 0) then
                queued = queued + 1
            end
        end
    until cursor == '0'
end
for i = 1, 11 do
    redis.call('DEL', KEYS[i])
end
redis.call('DEL', prio_key(KEYS[1]))
unqueue(KEYS[13], queued)
redis.call('SREM', KEYS[12], ARGV[1])
redis.call('ZREM', KEYS[14], ARGV[1])
redis.call('SREM', KEYS[15], ARGV[1])
return queued
