-- enqueue.lua: stores new tasks of one queue, all or none of them, within
-- the queue's bound and the tenant's quota.
--
-- The tenant's quota is checked and counted here, in the same atomic step
-- that stores the tasks, so concurrent enqueues cannot pass it: the
-- tenant's count of queued tasks (KEYS[6], kept exact by every script that
-- moves a task into or out of pending/scheduled/retrying) may not pass
-- max_queued, and a queue name the tenant does not have yet (KEYS[5]) is
-- refused once it has max_queues of them.
--
-- KEYS[1] pending    (list)  ready ids, pushed at the back (LPUSH)
-- KEYS[2] scheduled  (zset)  delayed ids by due time
-- KEYS[3] active     (zset)  counted against the queue's bound only
-- KEYS[4] task       (hash)  id -> record (see common.lua)
-- KEYS[5] queues     (set)   the tenant's queue names
-- KEYS[6] queued     (string) the tenant's count of queued tasks
-- KEYS[7] due        (zset)  the tenant's due index (delayed tasks)
-- KEYS[8] cap        (string) the tenant's fleet-wide concurrency cap:
--                            written when ARGV[6] carries one, so a worker
--                            that has never seen the tenant still holds it
--                            to its cap from the first acquire
-- KEYS[9] unique    (hash)  the tenant's unique keys -> the task holding each
-- KEYS[10] unique-ttl (zset) the tenant's unique keys by expiry (µs)
-- KEYS[11] rate-limit (string) the tenant's rate limit, written (or
--                            cleared) as ARGV[7] says
-- KEYS[12] meta      (hash)  split records' metadata (see common.lua)
-- KEYS[13] wake      (list)  optional: the queue name's wake-up list, given
--                            only where it shares a server with the queue
--                            (standalone Redis), so the wake-up is part of
--                            the same call
--
-- ARGV[1] now (µs); the metadata already carries it
-- ARGV[2] the queue's bound: pending + scheduled + active may not exceed it
-- ARGV[3] the tenant's max_queued
-- ARGV[4] the tenant's max_queues
-- ARGV[5] the queue's name, as the tenant's queue set holds it
-- ARGV[6] the tenant's max_concurrency, or empty (an unlimited enqueue
--         leaves the stored cap alone)
-- ARGV[7] the tenant's rate limit, `tasks per_ms`; `0`: it has none;
--         empty: leave the stored one alone (an unlimited enqueue)
-- ARGV[8] the tenant's max_unique_keys: unique keys held at once
-- ARGV[9] n, the number of tasks; then 5 values per task:
--         id, record (packed by Rust, see common.lua; state p or s), due
--         (µs; empty = ready now), unique key and until when it holds (µs)
--         (both empty: none)
--         then, with KEYS[13]: the wake-up token and how many tokens to keep
--
-- Returns {0, ready}   stored; `ready` of them went to pending
--         {1, id}      nothing stored: task `id` already exists (or is
--                      given twice)
--         {2, queued}  nothing stored: the queue holds `queued` tasks and
--                      these would pass its bound
--         {3, queued}  nothing stored: the tenant has `queued` tasks
--                      queued and these would pass its max_queued
--         {4, queues}  nothing stored: the queue is new and the tenant
--                      already has `queues` queue names, its max_queues
--         {5, id}      nothing stored: task `id` holds a task's unique key
--         {6, key}     nothing stored: two tasks share unique key `key`
--         {7, held}    nothing stored: the tenant holds `held` unique keys,
--                      and these would pass its max_unique_keys

local k_queues, k_queued = KEYS[5], KEYS[6]
local now = ARGV[1]
local bound_max = tonumber(ARGV[2])
local max_queued, max_queues = tonumber(ARGV[3]), tonumber(ARGV[4])
local queue = ARGV[5]
local n = tonumber(ARGV[9])
local first = 10

if n == 0 then
    return {0, 0}
end
local stride = 5
local ids = {}
for i = 0, n - 1 do
    ids[i + 1] = ARGV[first + i * stride]
end
local existing = redis.call('HMGET', KEYS[4], unpack(ids))
local seen = {}
for i = 1, n do
    if existing[i] or seen[ids[i]] then
        return {1, ids[i]}
    end
    seen[ids[i]] = true
end
-- Unique keys: a few expired ones are dropped, then a key still held
-- refuses the group, naming the task that holds it.
local unique_until = nil
local new_keys = 0
for i = 0, n - 1 do
    local key = ARGV[first + i * stride + 3]
    if key ~= '' then
        if not unique_until then
            unique_until = {}
            local old = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', now, 'LIMIT', 0, 64)
            if #old > 0 then
                redis.call('ZREM', KEYS[10], unpack(old))
                redis.call('HDEL', KEYS[9], unpack(old))
            end
        end
        if unique_until[key] then
            return {6, key}
        end
        local held = redis.call('ZSCORE', KEYS[10], key)
        if held and tonumber(held) > tonumber(now) then
            return {5, redis.call('HGET', KEYS[9], key)}
        end
        unique_until[key] = ARGV[first + i * stride + 4]
        new_keys = new_keys + 1
    end
end
if new_keys > 0 then
    local max_unique = tonumber(ARGV[8])
    local held = redis.call('ZCARD', KEYS[10])
    if held + new_keys > max_unique then
        -- Expired keys may still be counted: drop more of them first.
        local old = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', now, 'LIMIT', 0, 1000)
        if #old > 0 then
            redis.call('ZREM', KEYS[10], unpack(old))
            redis.call('HDEL', KEYS[9], unpack(old))
            held = held - #old
        end
        if held + new_keys > max_unique then
            return {7, held}
        end
    end
end
local here = pending_count(KEYS[1]) + redis.call('ZCARD', KEYS[2])
    + redis.call('ZCARD', KEYS[3])
if here + n > bound_max then
    return {2, here}
end
local queued = tonumber(redis.call('GET', k_queued) or '0') or 0
if queued + n > max_queued then
    return {3, queued}
end
if redis.call('SISMEMBER', k_queues, queue) == 0 then
    local have = redis.call('SCARD', k_queues)
    if have >= max_queues then
        return {4, have}
    end
    redis.call('SADD', k_queues, queue)
end
redis.call('INCRBY', k_queued, n)
if ARGV[6] ~= '' then
    redis.call('SET', KEYS[8], ARGV[6])
end
if ARGV[7] == '0' then
    redis.call('DEL', KEYS[11])
elseif ARGV[7] ~= '' then
    redis.call('SET', KEYS[11], ARGV[7])
end

local writes, ready, delayed, prios = record_writes(), {}, {}, nil
local nr, nd = 0, 0
local first_due = nil
for i = 0, n - 1 do
    local base = first + i * stride
    local id, due = ARGV[base], ARGV[base + 2]
    record_new(writes, id, ARGV[base + 1])
    if due ~= '' then
        local at = tonumber(due)
        if not first_due or at < first_due then
            first_due = at
        end
        delayed[nd + 1] = due
        delayed[nd + 2] = id
        nd = nd + 2
    else
        nr = nr + 1
        ready[nr] = id
        local p = meta_priority(ARGV[base + 1])
        if p > 0 then
            prios = prios or {}
            prios[nr] = p
        end
    end
end
record_flush(writes, KEYS[4], KEYS[12])
if unique_until then
    local last = 0
    for i = 0, n - 1 do
        local key = ARGV[first + i * stride + 3]
        if key ~= '' then
            local at = ARGV[first + i * stride + 4]
            redis.call('HSET', KEYS[9], key, ids[i + 1])
            redis.call('ZADD', KEYS[10], at, key)
            last = math.max(last, tonumber(at))
        end
    end
    -- Both keys go with their last entry, whoever stops sending.
    local ms = math.max(math.ceil((last - tonumber(now)) / 1000), 1)
    for _, k in ipairs({KEYS[9], KEYS[10]}) do
        if redis.call('PTTL', k) == -1 then
            redis.call('PEXPIRE', k, ms)
        else
            redis.call('PEXPIRE', k, ms, 'GT')
        end
    end
end
if nd > 0 then
    redis.call('ZADD', KEYS[2], unpack(delayed))
    due_by(KEYS[7], queue, first_due)
end
if nr > 0 then
    pend(KEYS[1], ready, prios, false)
    if KEYS[13] then
        local wake_at = first + n * stride
        redis.call('LPUSH', KEYS[13], ARGV[wake_at])
        redis.call('LTRIM', KEYS[13], 0, tonumber(ARGV[wake_at + 1]) - 1)
    end
end
return {0, nr}
