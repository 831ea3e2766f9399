-- enqueue.lua: stores new tasks of one queue, all or none of them.
--
-- KEYS[1] pending    (list)  ready ids, pushed at the back (LPUSH)
-- KEYS[2] scheduled  (zset)  delayed ids by due time
-- KEYS[3] active     (zset)  counted against the bound only
-- KEYS[4] task       (hash)  id -> task JSON
-- KEYS[5] meta       (hash)  id -> metadata (see common.lua)
-- KEYS[6] wake       (list)  optional: the queue name's wake-up list, given
--                            only where it shares a server with the queue
--                            (standalone Redis), so the wake-up is part of
--                            the same call
--
-- ARGV[1] now (µs); the metadata already carries it
-- ARGV[2] the queue's bound: pending + scheduled + active may not exceed it
-- ARGV[3] n, the number of tasks; then 4 values per task:
--         id, task JSON, metadata (packed by Rust, see common.lua; state
--         p or s), due (µs; empty = ready now)
--         then, with KEYS[6]: the wake-up token and how many tokens to keep
--
-- Returns {0, ready}   stored; `ready` of them went to pending
--         {1, id}      nothing stored: task `id` already exists (or is
--                      given twice)
--         {2, queued}  nothing stored: the queue holds `queued` tasks and
--                      these would pass the bound


local bound_max = tonumber(ARGV[2])
local n = tonumber(ARGV[3])

if n == 0 then
    return {0, 0}
end
local ids = {}
for i = 0, n - 1 do
    ids[i + 1] = ARGV[4 + i * 4]
end
local existing = redis.call('HMGET', KEYS[5], unpack(ids))
local seen = {}
for i = 1, n do
    if existing[i] or seen[ids[i]] then
        return {1, ids[i]}
    end
    seen[ids[i]] = true
end
local queued = redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
    + redis.call('ZCARD', KEYS[3])
if queued + n > bound_max then
    return {2, queued}
end

local tasks, metas, ready, delayed = {}, {}, {}, {}
local nt, nm, nr, nd = 0, 0, 0, 0
for i = 0, n - 1 do
    local base = 4 + i * 4
    local id, due = ARGV[base], ARGV[base + 3]
    tasks[nt + 1] = id
    tasks[nt + 2] = ARGV[base + 1]
    nt = nt + 2
    metas[nm + 1] = id
    metas[nm + 2] = ARGV[base + 2]
    nm = nm + 2
    if due ~= '' then
        delayed[nd + 1] = due
        delayed[nd + 2] = id
        nd = nd + 2
    else
        nr = nr + 1
        ready[nr] = id
    end
end
redis.call('HSET', KEYS[4], unpack(tasks))
if nd > 0 then
    redis.call('ZADD', KEYS[2], unpack(delayed))
end
redis.call('HSET', KEYS[5], unpack(metas))
if nr > 0 then
    redis.call('LPUSH', KEYS[1], unpack(ready))
    if KEYS[6] then
        local wake_at = 4 + n * 4
        redis.call('LPUSH', KEYS[6], ARGV[wake_at])
        redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[wake_at + 1]) - 1)
    end
end
return {0, nr}
