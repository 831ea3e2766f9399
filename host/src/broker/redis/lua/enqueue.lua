-- enqueue.lua: stores new tasks of one queue, all or none of them.
--
-- KEYS[1] pending    (list)  ready ids, pushed at the back (LPUSH)
-- KEYS[2] scheduled  (zset)  delayed ids by due time
-- KEYS[3] active     (zset)  counted against the bound only
-- KEYS[4] task       (hash)  id -> task JSON
-- KEYS[5] meta       (hash)  id -> metadata (see common.lua)
--
-- ARGV[1] now (µs)
-- ARGV[2] the queue's bound: pending + scheduled + active may not exceed it
-- ARGV[3] n, the number of tasks; then 6 values per task:
--         id, task JSON, attempt (0 for a new task), max_attempts,
--         current handler index, due (µs; empty = ready now)
--
-- Returns {0, ready}   stored; `ready` of them went to pending
--         {1, id}      nothing stored: task `id` already exists
--         {2, queued}  nothing stored: the queue holds `queued` tasks and
--                      these would pass the bound

local now = ARGV[1]
local bound_max = tonumber(ARGV[2])
local n = tonumber(ARGV[3])

for i = 0, n - 1 do
    local id = ARGV[4 + i * 6]
    if redis.call('HEXISTS', KEYS[5], id) == 1 then
        return {1, id}
    end
end
local queued = redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
    + redis.call('ZCARD', KEYS[3])
if queued + n > bound_max then
    return {2, queued}
end

local tasks, metas, ready = {}, {}, {}
for i = 0, n - 1 do
    local base = 4 + i * 6
    local id, json = ARGV[base], ARGV[base + 1]
    local attempt, max = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    local handler, due = ARGV[base + 4], ARGV[base + 5]
    tasks[#tasks + 1] = id
    tasks[#tasks + 1] = json
    local state = 'p'
    if due ~= '' then
        state = 's'
        redis.call('ZADD', KEYS[2], due, id)
    else
        ready[#ready + 1] = id
    end
    metas[#metas + 1] = id
    metas[#metas + 1] = meta_encode({
        state = state, attempt = attempt, max = max, token = 0, updated = now,
        run_at = '', handler = handler, started = '', worker = '',
    })
end
redis.call('HSET', KEYS[4], unpack(tasks))
redis.call('HSET', KEYS[5], unpack(metas))
if #ready > 0 then
    redis.call('LPUSH', KEYS[1], unpack(ready))
end
return {0, #ready}
