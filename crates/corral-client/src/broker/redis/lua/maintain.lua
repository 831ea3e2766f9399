-- maintain.lua: one bounded maintenance pass over some queues of one
-- tenant: those its due index says may have work (the caller reads the
-- index first, so a pass costs what is due, not what exists).
--
-- For each queue:
-- 1. Due delayed and retrying tasks become pending (back of the line).
-- 2. Tasks whose lease expired (their worker died or stalled) go back to
--    pending, or to the dead set with a `lease_expired` error when that was
--    their last attempt, or to the cancelled set when their cancel was
--    asked for (counted as expired_dead).
-- 3. Completed, dead and cancelled tasks past their retention time are dropped, with
--    their records; then both sets are cut to their bounds.
-- 4. The queue's entry in the due index is set to the earliest time it
--    next needs this (first scheduled task, first lease expiry, first
--    finished record's retention time), or removed when it needs nothing;
--    a queue left without any record or entry leaves the tenant's queue
--    set, so it no longer counts against max_queues.
-- Recovered tasks rejoin the tenant's count of queued tasks. A workflow
-- step that dies or is cancelled here fails its workflow as an ack would
-- (flow_step_ended): its record, the tenant's ready set and workflow set
-- are the tenant's keys named after KEYS[4] (same slot; which workflow
-- only the task's JSON says).
-- Each step handles at most ARGV[6] tasks per queue per call; a queue with
-- more left keeps a due time of now or earlier, and the answer says so.
--
-- KEYS[1] queues     (set)    the tenant's queue names
-- KEYS[2] queued     (string) the tenant's count of queued tasks
-- KEYS[3] due        (zset)   the tenant's due index
-- KEYS[4] running    (zset)   the tenant's active ids: expired ones leave
-- then 11 keys per queue, in the order of the names in ARGV:
--   pending (list), active, scheduled, completed, dead (zsets),
--   task, meta (see common.lua), progress, error
--   (hashes), cancelled (zset), retrying (string)
--
-- ARGV[1] now (µs)
-- ARGV[2] completed tasks that finished at or before this time go (µs)
-- ARGV[3] dead tasks that died at or before this time go (µs)
-- ARGV[4] most completed tasks kept
-- ARGV[5] most dead tasks kept
-- ARGV[6] most tasks handled per step
-- ARGV[7] how long completed tasks are kept (µs): ARGV[1] - ARGV[2]
-- ARGV[8] how long dead tasks are kept (µs): ARGV[1] - ARGV[3]
-- ARGV[9..] the queues' names, as the tenant's queue set holds them
--
-- Returns {more, then 4 values per queue, in order:
--          promoted, recovered, expired_dead, trimmed}
--   more: 1 if a step hit its limit and another call has work, else 0

local k_queues, k_queued, k_due = KEYS[1], KEYS[2], KEYS[3]
local now, completed_before, dead_before = ARGV[1], ARGV[2], ARGV[3]
local max_completed, max_dead, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local completed_ttl, dead_ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local more = 0
local tenant_base = string.sub(KEYS[4], 1, -(#':running' + 1))

local function step_failed(m, id, error)
    flow_step_failed(tenant_base, m, id, error, now)
end

local function maintain(queue, base)
    local k_pending, k_active, k_scheduled = KEYS[base], KEYS[base + 1], KEYS[base + 2]
    local k_completed, k_dead, k_task = KEYS[base + 3], KEYS[base + 4], KEYS[base + 5]
    local k_meta, k_progress, k_error = KEYS[base + 6], KEYS[base + 7], KEYS[base + 8]
    local k_cancelled, k_retrying = KEYS[base + 9], KEYS[base + 10]

    local promoted, retried = 0, 0
    local due = redis.call('ZRANGEBYSCORE', k_scheduled, '-inf', now, 'LIMIT', 0, limit)
    if #due == limit then
        more = 1
    end
    for _, id in ipairs(due) do
        redis.call('ZREM', k_scheduled, id)
        local m = meta_get(k_task, k_meta, id)
        if m and m.state == 'r' then
            retried = retried + 1
        end
        if m and (m.state == 's' or m.state == 'r') then
            m.state = 'p'
            m.updated = now
            meta_put(k_task, k_meta, id, m)
            pend(k_pending, {id}, {m.priority}, false)
            promoted = promoted + 1
        end
    end
    unretry(k_retrying, retried)

    local recovered, expired_dead = 0, 0
    local expired = redis.call('ZRANGEBYSCORE', k_active, '-inf', now, 'LIMIT', 0, limit)
    if #expired == limit then
        more = 1
    end
    for _, id in ipairs(expired) do
        redis.call('ZREM', k_active, id)
        redis.call('ZREM', KEYS[4], id)
        local m = meta_get(k_task, k_meta, id)
        if m and m.state == 'k' then
            m.updated = now
            m.state = 'x'
            local error = cancel_error(
                'the task was cancelled while it ran; its worker\'s lease expired before it reported back',
                tonumber(m.handler))
            redis.call('HSET', k_error, id, error)
            step_failed(m, id, error)
            redis.call('ZADD', k_cancelled, now, id)
            expired_dead = expired_dead + 1
            meta_put(k_task, k_meta, id, m)
        elseif m and m.state == 'a' then
            m.updated = now
            if m.attempt >= m.max then
                m.state = 'd'
                local error = cjson.encode({
                    kind = 'lease_expired',
                    message = string.format('the worker\'s lease expired on attempt %d of %d',
                        m.attempt, m.max),
                    retryable = false,
                    handler_index = tonumber(m.handler),
                })
                redis.call('HSET', k_error, id, error)
                step_failed(m, id, error)
                redis.call('ZADD', k_dead, now, id)
                expired_dead = expired_dead + 1
            else
                m.state = 'p'
                pend(k_pending, {id}, {m.priority}, false)
                recovered = recovered + 1
            end
            meta_put(k_task, k_meta, id, m)
        end
    end

    local trimmed = 0
    for _, set in ipairs({{k_completed, completed_before}, {k_dead, dead_before},
        {k_cancelled, dead_before}}) do
        local old = redis.call('ZRANGEBYSCORE', set[1], '-inf', set[2], 'LIMIT', 0, limit)
        if #old == limit then
            more = 1
        end
        if #old > 0 then
            redis.call('ZREM', set[1], unpack(old))
            forget_all(k_task, k_meta, k_progress, k_error, old)
            trimmed = trimmed + #old
        end
    end
    trimmed = trimmed + bound(k_completed, max_completed, k_task, k_meta, k_progress, k_error)
    trimmed = trimmed + bound(k_dead, max_dead, k_task, k_meta, k_progress, k_error)
    trimmed = trimmed + bound(k_cancelled, max_dead, k_task, k_meta, k_progress, k_error)
    requeue(k_queued, recovered)

    settle(k_due, k_queues, {
        name = queue, pending = k_pending, active = k_active, scheduled = k_scheduled,
        completed = k_completed, dead = k_dead, cancelled = k_cancelled, task = k_task,
        meta = k_meta,
    }, completed_ttl, dead_ttl)
    return promoted, recovered, expired_dead, trimmed
end

local out = {0}
local n = 1
for i = 9, #ARGV do
    local p, r, d, t = maintain(ARGV[i], 5 + (i - 9) * 11)
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = p, r, d, t
    n = n + 4
end
out[1] = more
return out
