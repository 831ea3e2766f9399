-- acquire.lua: leases up to `max` ready tasks of one queue to a worker.
--
-- First makes due delayed and retrying tasks pending (so a worker needs no
-- maintenance pass to see them), then pops ids from the front of pending
-- and moves each, in this one atomic step, to active: attempt + 1, token + 1,
-- lease until ARGV[2]. Nothing is ever popped without being leased, so a
-- worker that dies right after this script loses nothing: its leases expire
-- and maintain.lua returns the tasks.
--
-- An entry of pending that is not the id of a pending task is a raw push:
-- task JSON written onto the list by hand. It is stored as a task record
-- under its own `task_id` when that is a free, lowercase, hyphenated UUID,
-- else under a fresh id from ARGV, and leased like any other task with a
-- code saying so; the caller parses it and sends what does not parse to the
-- dead set. An id of a task that is no longer pending (a stale entry) is
-- dropped: that task is accounted for elsewhere.
--
-- KEYS[1] pending    (list)
-- KEYS[2] active     (zset)
-- KEYS[3] scheduled  (zset)
-- KEYS[4] task       (hash)
-- KEYS[5] meta       (hash)
-- KEYS[6] progress   (hash)
-- KEYS[7] error      (hash)
--
-- ARGV[1] now (µs)
-- ARGV[2] lease expiry (µs)
-- ARGV[3] worker id
-- ARGV[4] max tasks to lease
-- ARGV[5] max due tasks to promote
-- ARGV[6] default max_attempts for raw entries that name none
-- ARGV[7..] fresh ids for raw entries; at most one raw entry per fresh id
--           is taken, the rest wait for the next call
--
-- Returns {promoted, pending_left, next_due, n, then 6 values per leased task:
--          id, metadata, task JSON, checkpoint JSON or false,
--          error JSON or false, code}
--   next_due: the earliest due time (µs) in scheduled when nothing was
--             leased, else false
--   code: 0  a stored task
--         10 a raw entry stored under the task_id it names
--         11 a raw entry with no usable task_id (not JSON, no task_id, or
--            not a lowercase hyphenated UUID), stored under a fresh id
--         12 a raw entry whose task_id exists already, under a fresh id

local k_pending, k_active, k_scheduled = KEYS[1], KEYS[2], KEYS[3]
local k_task, k_meta, k_progress, k_error = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, expires, worker = ARGV[1], ARGV[2], ARGV[3]
local max, promote_max = tonumber(ARGV[4]), tonumber(ARGV[5])
local default_max_attempts = tonumber(ARGV[6])
local next_fresh = 7

local promoted = 0
local due = redis.call('ZRANGEBYSCORE', k_scheduled, '-inf', now, 'LIMIT', 0, promote_max)
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

local uuid = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local out = {}
local n = 0

local function lease(id, m, code)
    m.state = 'a'
    m.attempt = m.attempt + 1
    m.token = m.token + 1
    m.updated = now
    m.started = now
    m.worker = worker
    local encoded = meta_encode(m)
    redis.call('HSET', k_meta, id, encoded)
    redis.call('ZADD', k_active, expires, id)
    out[#out + 1] = id
    out[#out + 1] = encoded
    out[#out + 1] = redis.call('HGET', k_task, id)
    out[#out + 1] = redis.call('HGET', k_progress, id)
    out[#out + 1] = redis.call('HGET', k_error, id)
    out[#out + 1] = code
    n = n + 1
end

while n < max do
    local item = redis.call('RPOP', k_pending)
    if not item then
        break
    end
    local m = nil
    if string.len(item) == 36 then
        m = meta_get(k_meta, item)
    end
    if m then
        if m.state == 'p' then
            lease(item, m, 0)
        end
    else
        local fresh = ARGV[next_fresh]
        if not fresh then
            -- Out of fresh ids: leave the raw entry at the front for the
            -- next call.
            redis.call('RPUSH', k_pending, item)
            break
        end
        next_fresh = next_fresh + 1
        local id, code, max_attempts = fresh, 11, default_max_attempts
        local ok, doc = pcall(cjson.decode, item)
        if ok and type(doc) == 'table' then
            local named = doc['task_id']
            if type(named) == 'string' and string.match(named, uuid)
                and string.lower(named) == named then
                if redis.call('HEXISTS', k_meta, named) == 1 then
                    code = 12
                else
                    id, code = named, 10
                end
            end
            local ma = doc['max_attempts']
            if type(ma) == 'number' and ma >= 1 and ma <= 1000000 and ma == math.floor(ma) then
                max_attempts = ma
            end
        end
        redis.call('HSET', k_task, id, item)
        lease(id, {
            state = 'p', attempt = 0, max = max_attempts, token = 0, updated = now,
            run_at = '', handler = '0', started = '', worker = '',
        }, code)
    end
end

local next_due = false
if n == 0 then
    local first = redis.call('ZRANGE', k_scheduled, 0, 0, 'WITHSCORES')
    if first[2] then
        next_due = first[2]
    end
end
local result = {promoted, redis.call('LLEN', k_pending), next_due, n}
for _, v in ipairs(out) do
    result[#result + 1] = v
end
return result
