-- requeue.lua: runs dead or cancelled tasks of one queue again, all of a
-- batch or none.
--
-- The caller read each task and wrote its new JSON (error moved to the
-- error history, attempts reset); this step applies a task only if its
-- record is still the one read (state d or x, same update time), so a
-- task that changed meanwhile is skipped, never overwritten. Applied tasks
-- go to the back of pending with attempt 0, their last error cleared,
-- their checkpoint kept (they resume where they stopped), and join their
-- tenant's count of queued tasks, which may not pass max_queued.
--
-- KEYS[1] pending    (list)
-- KEYS[2] dead       (zset)
-- KEYS[3] cancelled  (zset)
-- KEYS[4] task       (hash)   id -> record (see common.lua)
-- KEYS[5] meta       (hash)   split records' metadata (see common.lua)
-- KEYS[6] error      (hash)
-- KEYS[7] queued     (string) the tenant's count of queued tasks
--
-- ARGV[1] now (µs)
-- ARGV[2] the tenant's max_queued
-- ARGV[3] n; then 3 values per task: id, its update time as read (µs),
--         its new task JSON
--
-- Returns {0, applied}      done
--         {1, queued}       max_queued would be passed: nothing applied

local now, max_queued, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ready = {}
for i = 0, n - 1 do
    local base = 4 + i * 3
    local id = ARGV[base]
    local m = meta_get(KEYS[4], KEYS[5], id)
    if m and (m.state == 'd' or m.state == 'x') and m.updated == tonumber(ARGV[base + 1]) then
        ready[#ready + 1] = {id, m, ARGV[base + 2]}
    end
end
local queued = tonumber(redis.call('GET', KEYS[7]) or '0') or 0
if queued + #ready > max_queued then
    return {1, queued}
end
local pushed, prios = {}, {}
for i, r in ipairs(ready) do
    local id, m = r[1], r[2]
    if m.state == 'd' then
        redis.call('ZREM', KEYS[2], id)
    else
        redis.call('ZREM', KEYS[3], id)
    end
    m.state = 'p'
    m.attempt = 0
    m.run_at = 0
    m.updated = now
    -- The new JSON decides the record's form; a split record that turns
    -- inline leaves the `meta` hash.
    m.json = r[3]
    local writes = record_writes()
    record_new(writes, id, meta_encode(m))
    record_flush(writes, KEYS[4], KEYS[5])
    if m.split and writes.nm == 0 then
        redis.call('HDEL', KEYS[5], id)
    end
    redis.call('HDEL', KEYS[6], id)
    pushed[i] = id
    prios[i] = m.priority
end
if #pushed > 0 then
    pend(KEYS[1], pushed, prios, false)
    requeue(KEYS[7], #pushed)
end
return {0, #pushed}
