-- acquire.lua: leases up to `max` ready tasks of one queue to a worker.
--
-- First makes due delayed and retrying tasks pending (so a worker needs no
-- maintenance pass to see them), then pops ids from the front of pending
-- (the queue's priorities' set first, highest priority first, then the
-- list of priority-0 tasks; see `pend` in common.lua) and moves each, in
-- this one atomic step, to active: attempt + 1, token + 1, lease until
-- ARGV[2]. Nothing is ever popped without being leased, so a
-- worker that dies right after this script loses nothing: its leases expire
-- and maintain.lua returns the tasks.
--
-- Work is done in batches (one ZPOPMIN, RPOP, HMGET, HSET, ZADD for all
-- tasks of the call), because each redis.call from Lua has a fixed cost
-- that would otherwise dominate.
--
-- An entry of pending that is not the id of a pending task is a raw push:
-- task JSON written onto the list by hand. It is stored as a task record
-- under its own `task_id` when that is a free, lowercase, hyphenated UUID
-- other than the nil one (what a stored record that leaves its id out reads
-- as), else under a fresh id from ARGV, and leased like any other task with a
-- code saying so; the caller parses it and sends what does not parse to the
-- dead set. An id of a task that is no longer pending (a stale entry) is
-- dropped: that task is accounted for elsewhere.
--
-- Stored tasks leased here leave the tenant's count of queued tasks; raw
-- entries were never counted (they are not tasks until taken here), but
-- their queue joins the tenant's queue set once it holds their records.
--
-- KEYS[1] pending    (list)
-- KEYS[2] active     (zset)
-- KEYS[3] scheduled  (zset)
-- KEYS[4] task       (hash)   id -> record (see common.lua)
-- KEYS[5] meta       (hash)   split records' metadata (see common.lua)
-- KEYS[6] progress   (hash)
-- KEYS[7] error      (hash)
-- KEYS[8] queues     (set)    the tenant's queue names
-- KEYS[9] queued     (string) the tenant's count of queued tasks
-- KEYS[10] due       (zset)   the tenant's due index: the leases' expiry
-- KEYS[11] paused    (set)    the tenant's paused queue names: a paused
--                             queue gives nothing (and promotes nothing)
-- KEYS[12] retrying  (string) the queue's count of retrying tasks
-- KEYS[13] running   (zset)   the tenant's active ids over all queues and
--                             workers, by lease expiry
-- KEYS[14] cap       (string) the tenant's fleet-wide concurrency cap
-- KEYS[15] capped    (set)    the tenant's queue names held back by the cap,
--                             woken by the ack that frees a slot
-- KEYS[16] rate-limit (string) the tenant's rate limit, `tasks per_ms`
-- KEYS[17] rate      (hash)   the tenant's rate window: `w` index, `n` count
-- KEYS[18] job-rates (hash)   the tenant's per-job rate limits: job name →
--                             `tasks per_ms`
-- KEYS[19] job-rate  (hash)   their current windows: job name → `w n`
--
-- A stored task whose job is over its rate limit in the current window is
-- not leased: it waits, scheduled for the next window (state s, attempt
-- not counted), and rejoins the back of pending then (step 1 of a later
-- call, or maintenance), so tasks of other jobs behind it go on.
--
-- ARGV[1] now (µs)
-- ARGV[2] lease expiry (µs)
-- ARGV[3] worker id
-- ARGV[4] max tasks to lease
-- ARGV[5] max due tasks to promote
-- ARGV[6] default max_attempts for raw entries that name none
-- ARGV[7] the queue's name, as the tenant's queue set holds it
-- ARGV[8] the tenant's concurrency cap as the worker read it from the
--         catalog, or empty when it has none: stored in KEYS[14] when it
--         differs, so every worker (and ack.lua) sees the newest
-- ARGV[9] the tenant's rate limit as the worker read it, `tasks per_ms`;
--         `0`: it has none; empty: not known (KEYS[16] applies)
-- ARGV[10..] fresh ids for raw entries; at most one raw entry per fresh id
--           is taken, the rest wait for the next call
--
-- Returns {promoted, pending_left, next_due, n, then 5 values per leased task:
--          id, record (metadata and task JSON, see common.lua),
--          checkpoint JSON or false, error JSON or false, code}
--   next_due: when nothing was leased, the earliest time (µs) something
--             may be: the first due time in scheduled, or the next rate
--             window when the limit held tasks back; else false
--   code: 0  a stored task
--         10 a raw entry stored under the task_id it names
--         11 a raw entry with no usable task_id (not JSON, no task_id, or
--            not a lowercase hyphenated UUID, or the nil UUID), stored
--            under a fresh id
--         12 a raw entry whose task_id exists already, under a fresh id

local k_pending, k_active, k_scheduled = KEYS[1], KEYS[2], KEYS[3]
local k_task, k_meta, k_progress, k_error = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now, expires, worker = ARGV[1], ARGV[2], ARGV[3]
local max, promote_max = tonumber(ARGV[4]), tonumber(ARGV[5])
local default_max_attempts = tonumber(ARGV[6])
local k_queues, k_queued, queue = KEYS[8], KEYS[9], ARGV[7]
local next_fresh = 10

if redis.call('SISMEMBER', KEYS[11], queue) == 1 then
    return {0, 0, false, 0}
end

-- 0. The tenant's fleet-wide cap: no more of its tasks leased at once,
-- over all workers, than the cap. Leases that ran out no longer count
-- (maintain.lua returns their tasks).
local cap = redis.call('GET', KEYS[14])
if ARGV[8] ~= '' and ARGV[8] ~= cap then
    redis.call('SET', KEYS[14], ARGV[8])
    cap = ARGV[8]
end
cap = tonumber(cap)
if cap then
    redis.call('ZREMRANGEBYSCORE', KEYS[13], '-inf', '(' .. now)
    local room = cap - redis.call('ZCARD', KEYS[13])
    if room < max then
        max = math.max(room, 0)
        if pending_count(k_pending) > max then
            redis.call('SADD', KEYS[15], queue)
        end
    end
end

-- 0b. The tenant's rate limit: at most `tasks` leased per window of
-- `per_ms`, windows aligned to the epoch, counted over all workers.
local limit = redis.call('GET', KEYS[16])
if ARGV[9] ~= '' and ARGV[9] ~= limit then
    if ARGV[9] == '0' then
        redis.call('DEL', KEYS[16])
        limit = false
    else
        redis.call('SET', KEYS[16], ARGV[9])
        limit = ARGV[9]
    end
end
local rate_window, rate_used, rate_next = nil, 0, nil
if limit then
    local n, per = string.match(limit, '^(%d+) (%d+)$')
    n, per = tonumber(n), tonumber(per)
    if n and per and per > 0 then
        per = per * 1000
        rate_window = math.floor(tonumber(now) / per)
        local w = redis.call('HMGET', KEYS[17], 'w', 'n')
        if tonumber(w[1]) == rate_window then
            rate_used = tonumber(w[2]) or 0
        end
        local room = n - rate_used
        if room < max then
            max = math.max(room, 0)
            rate_next = (rate_window + 1) * per
        end
    end
end

-- 1. Due delayed and retrying tasks join the back of pending.
local promoted = 0
local due = redis.call('ZRANGEBYSCORE', k_scheduled, '-inf', now, 'LIMIT', 0, promote_max)
if #due > 0 then
    redis.call('ZREM', k_scheduled, unpack(due))
    local metas = records(k_task, k_meta, due)
    local writes, ready, prios, retried = record_writes(), {}, {}, 0
    for i, id in ipairs(due) do
        local m = metas[i]
        if m and m.state == 'r' then
            retried = retried + 1
        end
        if m and (m.state == 's' or m.state == 'r') then
            m.state = 'p'
            m.updated = now
            record_write(writes, id, m)
            ready[#ready + 1] = id
            prios[#ready] = m.priority
        end
    end
    if #ready > 0 then
        record_flush(writes, k_task, k_meta)
        pend(k_pending, ready, prios, false)
        promoted = #ready
    end
    unretry(KEYS[12], retried)
end

-- 2. Take up to `max` entries from the front of pending.
local uuid = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local nil_uuid = '00000000-0000-0000-0000-000000000000'
local leases = {} -- {id, meta, code}, in the order taken
local taken = {} -- ids leased by this call
local popped = false
-- How many ids the priorities' set still holds, once known for free (a
-- pop that got fewer than it asked for emptied it).
local prio_left = nil
if max > 0 then
    -- ZPOPMIN answers id, score, id, score, ...; only ids are kept. The
    -- set holds ids only, so raw entries (below) all come from the list
    -- and are the ones put back there.
    local first = redis.call('ZPOPMIN', prio_key(k_pending), max)
    if #first < 2 * max then
        prio_left = 0
    end
    if #first > 0 then
        popped = {}
        for i = 1, #first, 2 do
            popped[#popped + 1] = first[i]
        end
    end
    if not popped or #popped < max then
        local rest = redis.call('RPOP', k_pending, max - (popped and #popped or 0))
        if rest and popped then
            for _, item in ipairs(rest) do
                popped[#popped + 1] = item
            end
        elseif rest then
            popped = rest
        end
    end
end
if popped then
    local known = records_by_id(k_task, k_meta, popped)
    for i, item in ipairs(popped) do
        local m = known[item]
        if m then
            -- An id of a task that is not pending (or was already taken by
            -- this call) is a stale entry: the task is accounted for
            -- elsewhere, so the entry is dropped.
            if m.state == 'p' and not taken[item] then
                taken[item] = true
                leases[#leases + 1] = {item, m, 0}
            end
        else
            local fresh = ARGV[next_fresh]
            if not fresh then
                -- Out of fresh ids: put this entry and the rest back at the
                -- front, in order, for the next call.
                for j = #popped, i, -1 do
                    redis.call('RPUSH', k_pending, popped[j])
                end
                break
            end
            next_fresh = next_fresh + 1
            local id, code, max_attempts = fresh, 11, default_max_attempts
            local ok, doc = pcall(cjson.decode, item)
            if ok and type(doc) == 'table' then
                local named = doc['task_id']
                if type(named) == 'string' and string.match(named, uuid)
                    and string.lower(named) == named and named ~= nil_uuid then
                    if taken[named] or redis.call('HEXISTS', k_task, named) == 1 then
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
            taken[id] = true
            leases[#leases + 1] = {id, {
                state = 'p', attempt = 0, max = max_attempts, token = 0, updated = now,
                run_at = 0, priority = 0, handler = 0, started = 0, worker = '', json = item,
            }, code}
        end
    end
end

-- 2b. Per-job rate limits, only for tenants that set one: a task over its
-- job's limit waits, scheduled for the job's next window.
if #leases > 0 and redis.call('EXISTS', KEYS[18]) == 1 then
    local jobs, limits, windows = {}, {}, {}
    for i, l in ipairs(leases) do
        if l[3] == 0 then
            jobs[i] = string.match(record_json(l[2]), '"job_name":"([^"\\]*)"')
        end
    end
    local kept, deferred = {}, 0
    local dirty = {}
    for i, l in ipairs(leases) do
        local job = jobs[i]
        local hold = nil
        if job then
            if limits[job] == nil then
                limits[job] = redis.call('HGET', KEYS[18], job) or false
                if limits[job] then
                    local n, per = string.match(limits[job], '^(%d+) (%d+)$')
                    n, per = tonumber(n), tonumber(per)
                    if n and per and per > 0 then
                        per = per * 1000
                        local w = math.floor(tonumber(now) / per)
                        local used = 0
                        local got = redis.call('HGET', KEYS[19], job)
                        if got then
                            local gw, gn = string.match(got, '^(%d+) (%d+)$')
                            if tonumber(gw) == w then
                                used = tonumber(gn)
                            end
                        end
                        windows[job] = {w = w, used = used, n = n, per = per}
                    else
                        limits[job] = false
                    end
                end
            end
            local win = windows[job]
            if win then
                if win.used < win.n then
                    win.used = win.used + 1
                    dirty[job] = true
                else
                    hold = (win.w + 1) * win.per
                end
            end
        end
        if hold then
            local m = l[2]
            m.state = 's'
            m.run_at = string.format('%.0f', hold)
            m.updated = now
            meta_put(k_task, k_meta, l[1], m)
            redis.call('ZADD', k_scheduled, m.run_at, l[1])
            due_by(KEYS[10], queue, m.run_at)
            deferred = deferred + 1
            if not rate_next or hold < rate_next then
                rate_next = hold
            end
        else
            kept[#kept + 1] = l
        end
    end
    for job, _ in pairs(dirty) do
        local win = windows[job]
        redis.call('HSET', KEYS[19], job, string.format('%.0f %d', win.w, win.used))
    end
    if deferred > 0 then
        leases = kept
    end
end

-- 3. Record the leases, all at once, and answer with what the worker needs.
-- (Counters instead of `#t + 1`: the length operator is not free in Lua.)
local result = {promoted, 0, false, #leases}
if #leases > 0 then
    local writes, zadd_args, again = record_writes(), {}, {}
    local nz, na, stored, raw = 0, 0, 0, 0
    for _, l in ipairs(leases) do
        local id, m = l[1], l[2]
        if l[3] == 0 then
            stored = stored + 1
        else
            raw = raw + 1
        end
        -- A task leased before may have a checkpoint and an error.
        if m.token > 0 then
            na = na + 1
            again[na] = id
        end
        m.state = 'a'
        m.attempt = m.attempt + 1
        m.token = m.token + 1
        m.updated = now
        m.started = now
        m.worker = worker
        if l[3] == 0 then
            l[4] = record_write(writes, id, m) or meta_encode(m)
        else
            -- A raw entry's first record: split if its JSON is large.
            l[4] = meta_encode(m)
            record_new(writes, id, l[4])
        end
        zadd_args[nz + 1] = expires
        zadd_args[nz + 2] = id
        nz = nz + 2
    end
    record_flush(writes, k_task, k_meta)
    redis.call('ZADD', k_active, unpack(zadd_args))
    redis.call('ZADD', KEYS[13], unpack(zadd_args))
    if rate_window then
        redis.call('HSET', KEYS[17], 'w', rate_window, 'n', rate_used + #leases)
    end
    unqueue(k_queued, stored)
    due_by(KEYS[10], queue, expires)
    if raw > 0 then
        redis.call('SADD', k_queues, queue)
    end
    local progress, errors = {}, {}
    if na > 0 then
        local p = redis.call('HMGET', k_progress, unpack(again))
        local e = redis.call('HMGET', k_error, unpack(again))
        for i, id in ipairs(again) do
            progress[id] = p[i]
            errors[id] = e[i]
        end
    end
    local nr = 4
    for _, l in ipairs(leases) do
        local id = l[1]
        result[nr + 1] = id
        result[nr + 2] = l[4]
        result[nr + 3] = progress[id] or false
        result[nr + 4] = errors[id] or false
        result[nr + 5] = l[3]
        nr = nr + 5
    end
else
    local first = redis.call('ZRANGE', k_scheduled, 0, 0, 'WITHSCORES')
    if first[2] then
        result[3] = first[2]
    end
    if rate_next and (not first[2] or rate_next < tonumber(first[2])) then
        result[3] = string.format('%.0f', rate_next)
    end
end
if prio_left then
    result[2] = redis.call('LLEN', k_pending)
else
    result[2] = pending_count(k_pending)
end
return result
