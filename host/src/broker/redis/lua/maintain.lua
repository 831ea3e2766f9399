-- maintain.lua: one bounded maintenance pass over one queue.
--
-- 1. Due delayed and retrying tasks become pending (back of the line).
-- 2. Tasks whose lease expired (their worker died or stalled) go back to
--    pending, or to the dead set with a `lease_expired` error when that was
--    their last attempt.
-- 3. Completed and dead tasks past their retention time are dropped, with
--    their records; then both sets are cut to their bounds.
-- 4. A queue left without any record or entry leaves the tenant's queue
--    set, so it no longer counts against max_queues.
-- Recovered tasks rejoin the tenant's count of queued tasks (KEYS[11]).
-- Each step handles at most ARGV[6] tasks per call; the caller calls again
-- while the answer says more is left.
--
-- KEYS[1] pending    (list)
-- KEYS[2] active     (zset)
-- KEYS[3] scheduled  (zset)
-- KEYS[4] completed  (zset)
-- KEYS[5] dead       (zset)
-- KEYS[6] task       (hash)
-- KEYS[7] meta       (hash)
-- KEYS[8] progress   (hash)
-- KEYS[9] error      (hash)
-- KEYS[10] queues    (set)    the tenant's queue names
-- KEYS[11] queued    (string) the tenant's count of queued tasks
--
-- ARGV[1] now (µs)
-- ARGV[2] completed tasks that finished at or before this time go (µs)
-- ARGV[3] dead tasks that died at or before this time go (µs)
-- ARGV[4] most completed tasks kept
-- ARGV[5] most dead tasks kept
-- ARGV[6] most tasks handled per step
-- ARGV[7] the queue's name, as the tenant's queue set holds it
--
-- Returns {promoted, recovered, expired_dead, trimmed, more}
--   more: 1 if a step hit its limit and another call has work, else 0

local k_pending, k_active, k_scheduled, k_completed, k_dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local k_task, k_meta, k_progress, k_error = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now, completed_before, dead_before = ARGV[1], ARGV[2], ARGV[3]
local max_completed, max_dead, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local more = 0

local promoted = 0
local due = redis.call('ZRANGEBYSCORE', k_scheduled, '-inf', now, 'LIMIT', 0, limit)
if #due == limit then
    more = 1
end
for _, id in ipairs(due) do
    redis.call('ZREM', k_scheduled, id)
    local m = meta_get(k_meta, id)
    if m and (m.state == 's' or m.state == 'r') then
        m.state = 'p'
        m.updated = now
        meta_put(k_meta, id, m)
        redis.call('LPUSH', k_pending, id)
        promoted = promoted + 1
    end
end

local recovered, expired_dead = 0, 0
local expired = redis.call('ZRANGEBYSCORE', k_active, '-inf', now, 'LIMIT', 0, limit)
if #expired == limit then
    more = 1
end
for _, id in ipairs(expired) do
    redis.call('ZREM', k_active, id)
    local m = meta_get(k_meta, id)
    if m and m.state == 'a' then
        m.updated = now
        if m.attempt >= m.max then
            m.state = 'd'
            redis.call('HSET', k_error, id, cjson.encode({
                kind = 'lease_expired',
                message = string.format('the worker\'s lease expired on attempt %d of %d',
                    m.attempt, m.max),
                retryable = false,
                handler_index = tonumber(m.handler),
            }))
            redis.call('ZADD', k_dead, now, id)
            expired_dead = expired_dead + 1
        else
            m.state = 'p'
            redis.call('LPUSH', k_pending, id)
            recovered = recovered + 1
        end
        meta_put(k_meta, id, m)
    end
end

local trimmed = 0
for _, set in ipairs({{k_completed, completed_before}, {k_dead, dead_before}}) do
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
requeue(KEYS[11], recovered)
if redis.call('HLEN', k_meta) == 0 and redis.call('LLEN', k_pending) == 0 then
    redis.call('SREM', KEYS[10], ARGV[7])
end

return {promoted, recovered, expired_dead, trimmed, more}
