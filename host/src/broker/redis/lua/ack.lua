-- ack.lua: finishes leased tasks of one queue, each with its outcome.
--
-- Each outcome is checked against the task's fencing token: a worker whose
-- lease moved on gets code 1 and changes nothing. An outcome already
-- applied under the same token (a retried ack whose first reply was lost)
-- answers 0 again without applying twice. Finished sets are then cut to
-- their bounds, oldest first.
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
--
-- ARGV[1] now (µs)
-- ARGV[2] most completed tasks kept
-- ARGV[3] most dead tasks kept
-- ARGV[4] n, the number of outcomes; then 6 values per outcome:
--         id, token, kind, JSON, due, handler
--   kind c completed: JSON is the final checkpoint, handler its index
--        r retry:     JSON is the error, due when to run again (µs)
--        d dead:      JSON is the error
--        l release:   back to the front of pending, attempt not counted
--
-- Returns one code per outcome, in order:
--         0 applied (or already applied under this token)
--         1 lease lost

local k_pending, k_active, k_scheduled, k_completed, k_dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local k_task, k_meta, k_progress, k_error = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now = ARGV[1]
local max_completed, max_dead = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local target = {c = 'c', r = 'r', d = 'd', l = 'p'}

local codes = {}
for i = 0, n - 1 do
    local base = 5 + i * 6
    local id, token, kind = ARGV[base], tonumber(ARGV[base + 1]), ARGV[base + 2]
    local json, due, handler = ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
    local m = meta_get(k_meta, id)
    local code = 1
    if m and m.token == token and m.state == 'a' and target[kind] then
        code = 0
        redis.call('ZREM', k_active, id)
        m.updated = now
        m.state = target[kind]
        if kind == 'c' then
            m.handler = handler
            redis.call('HSET', k_progress, id, json)
            redis.call('HDEL', k_error, id)
            redis.call('ZADD', k_completed, now, id)
        elseif kind == 'r' then
            m.run_at = due
            redis.call('HSET', k_error, id, json)
            redis.call('ZADD', k_scheduled, due, id)
        elseif kind == 'd' then
            redis.call('HSET', k_error, id, json)
            redis.call('ZADD', k_dead, now, id)
        else
            if m.attempt > 0 then
                m.attempt = m.attempt - 1
            end
            redis.call('RPUSH', k_pending, id)
        end
        meta_put(k_meta, id, m)
    elseif m and m.token == token and m.state == target[kind] then
        code = 0
    end
    codes[#codes + 1] = code
end
bound(k_completed, max_completed, k_task, k_meta, k_progress, k_error)
bound(k_dead, max_dead, k_task, k_meta, k_progress, k_error)
return codes
