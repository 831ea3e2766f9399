-- common.lua: helpers that scripts.rs prepends to every Corral script.
--
-- A task's record takes one of two forms, by the size of its JSON.
--
-- Inline (JSON of at most INLINE_MAX bytes: most tasks): one field of
-- the queue's `task` hash holding the metadata, packed with Lua's struct
-- library (big-endian) rather than written as text, then the worker's id,
-- then the task JSON as Rust wrote it. One field per task instead of two
-- saves a hash entry and a copy of the id, most of what a small queued
-- task costs in Redis memory; every change of state rewrites the field, so
-- its JSON is copied each time, which only a small JSON makes cheap.
--
--   c1 state         p pending, s scheduled, a active, r retrying,
--                    c completed, d dead, x cancelled; k active with a
--                    cancel asked for (a lease like `a`, but it ends
--                    cancelled whatever the worker reports but success)
--   I4 attempt       attempts started (counted on acquire)
--   I4 max_attempts  copied from the task, so scripts need not parse JSON
--   I6 token         the fencing token; grows by one on every acquire
--                    (2^48 acquires of one task never happen)
--   d  updated       when the task last changed, µs since the epoch
--   d  run_at        when a retry is due (µs), 0 if none
--   B  priority      the task's priority, 0-9 (see `pend` below)
--   I3 handler       the next handler to run (the checkpoint's index)
--   d  started       when the current or last attempt started (µs), 0 if
--                    none yet
--   B  worker length then the bytes of the worker holding or last holding
--                    the lease (at most 255)
--   then the task JSON
--
-- Split (a larger JSON, and every record of versions before the inline
-- form): the JSON alone in the `task` hash, the metadata in the queue's
-- `meta` hash (SPLIT below: the same fields, the token a double, no
-- worker length: the worker's id is the rest of the field). A change of
-- state rewrites the small metadata only; the JSON is read when a step
-- needs it, and written once.
--
-- Scripts see one form: `records` decodes either, `record_write` writes
-- each back in its own form, and what goes back to Rust is always the
-- inline form (record.rs reads it). Times are doubles: exact for integers
-- below 2^53 (µs since the epoch stay below that until the year 2255).
-- They come from Rust as ARGV; scripts never read the clock.

local META = '>c1I4I4I6ddBI3dB'
local META_LEN = 44
local SPLIT = '>c1I4I4dddBI3d'
local SPLIT_LEN = 45
local INLINE_MAX = 512

-- The metadata's fields, as both forms hold them.
local function meta_fields(s, a, m, t, u, r, p, h, st)
    return {
        state = s,
        attempt = a,
        max = m,
        token = t,
        updated = u,
        run_at = r,
        priority = p,
        handler = h,
        started = st,
    }
end

-- Decodes inline record `v` into a table of its metadata; `raw` keeps the
-- record, `wl` the length of its worker id (cut out by `record_worker`
-- only when asked: most steps leave it as it is) and `json_at` where its
-- JSON starts (cut out by `record_json` only when asked). Nil for a
-- missing or damaged record.
local function meta_decode(v)
    if not v or string.len(v) < META_LEN then
        return nil
    end
    local s, a, m, t, u, r, p, h, st, wl = struct.unpack(META, v)
    if string.len(v) < META_LEN + wl then
        return nil
    end
    local out = meta_fields(s, a, m, t, u, r, p, h, st)
    out.raw, out.wl, out.json_at = v, wl, META_LEN + wl + 1
    return out
end

-- Decodes split metadata `v` of task `id`, whose JSON is in `k_task`.
local function split_decode(v, k_task, id)
    if not v or string.len(v) < SPLIT_LEN then
        return nil
    end
    local out = meta_fields(struct.unpack(SPLIT, v))
    out.worker, out.split, out.k_task, out.id = string.sub(v, SPLIT_LEN + 1), true, k_task, id
    return out
end

-- The worker id of decoded record `m`.
local function record_worker(m)
    if not m.worker then
        m.worker = string.sub(m.raw, META_LEN + 1, META_LEN + m.wl)
    end
    return m.worker
end

-- The task JSON of decoded record `m` (read from the `task` hash when the
-- record is split).
local function record_json(m)
    if not m.json then
        if m.split then
            m.json = redis.call('HGET', m.k_task, m.id) or ''
        else
            m.json = string.sub(m.raw, m.json_at)
        end
    end
    return m.json
end

-- Packs `m` into an inline record: its worker id (`m.worker`) and task
-- JSON (`m.json`) where a step set them, else those of the record it was
-- decoded from, copied in one piece when both are.
local function meta_encode(m)
    local w = m.worker
    if not w and not m.json then
        return struct.pack(META, m.state, m.attempt, m.max, m.token, m.updated, m.run_at,
            m.priority, m.handler, m.started, m.wl) .. string.sub(m.raw, META_LEN + 1)
    end
    w = w or record_worker(m)
    if string.len(w) > 255 then
        w = string.sub(w, 1, 255)
    end
    return struct.pack(META, m.state, m.attempt, m.max, m.token, m.updated, m.run_at,
        m.priority, m.handler, m.started, string.len(w)) .. w .. record_json(m)
end

-- Packs the metadata of `m` in the split form.
local function split_encode(m)
    return struct.pack(SPLIT, m.state, m.attempt, m.max, m.token, m.updated, m.run_at,
        m.priority, m.handler, m.started) .. record_worker(m)
end

-- The priority byte of inline record `v`, without unpacking the rest.
local function meta_priority(v)
    return v and string.byte(v, 32) or 0
end

-- The decoded records of `ids` (nil where there is none): split ones from
-- `k_meta` (their JSON left where it is), the rest inline from `k_task`.
-- While a queue holds no split record, the split side costs one EXISTS.
local function records(k_task, k_meta, ids)
    local out, want, at, n = {}, ids, nil, #ids
    if redis.call('EXISTS', k_meta) == 1 then
        local splits = redis.call('HMGET', k_meta, unpack(ids))
        want, at, n = {}, {}, 0
        for i = 1, #ids do
            if splits[i] then
                out[i] = split_decode(splits[i], k_task, ids[i])
            else
                n = n + 1
                want[n] = ids[i]
                at[n] = i
            end
        end
    end
    if n > 0 then
        local vals = redis.call('HMGET', k_task, unpack(want, 1, n))
        for j = 1, n do
            out[at and at[j] or j] = meta_decode(vals[j])
        end
    end
    return out
end

-- The decoded records of the ids among `entries` (a line's entries: raw
-- entries and other text are not ids, and are not looked up), by id.
local function records_by_id(k_task, k_meta, entries)
    local ids, n = {}, 0
    for _, e in ipairs(entries) do
        if string.len(e) == 36 then
            n = n + 1
            ids[n] = e
        end
    end
    local out = {}
    if n > 0 then
        local found = records(k_task, k_meta, ids)
        for i = 1, n do
            out[ids[i]] = found[i]
        end
    end
    return out
end

local function meta_get(k_task, k_meta, id)
    return records(k_task, k_meta, {id})[1]
end

-- Batched writes of records, each in its form: `record_write` and
-- `record_new` add one, `record_flush` sends them, one HSET per hash.
local function record_writes()
    return {task = {}, meta = {}, nt = 0, nm = 0}
end

-- Adds `m` (decoded by `records`) of task `id`; returns its inline record
-- when it wrote one.
local function record_write(w, id, m)
    if m.split then
        w.meta[w.nm + 1] = id
        w.meta[w.nm + 2] = split_encode(m)
        w.nm = w.nm + 2
        return nil
    end
    local record = meta_encode(m)
    w.task[w.nt + 1] = id
    w.task[w.nt + 2] = record
    w.nt = w.nt + 2
    return record
end

-- Adds new inline record `record` (from Rust) of task `id`, split when its
-- JSON is too large to copy on every change of state.
local function record_new(w, id, record)
    local m = string.len(record) > META_LEN + INLINE_MAX and meta_decode(record)
    if m and string.len(record) - m.json_at >= INLINE_MAX then
        w.task[w.nt + 1] = id
        w.task[w.nt + 2] = record_json(m)
        w.nt = w.nt + 2
        w.meta[w.nm + 1] = id
        w.meta[w.nm + 2] = split_encode(m)
        w.nm = w.nm + 2
    else
        w.task[w.nt + 1] = id
        w.task[w.nt + 2] = record
        w.nt = w.nt + 2
    end
end

local function record_flush(w, k_task, k_meta)
    if w.nt > 0 then
        redis.call('HSET', k_task, unpack(w.task, 1, w.nt))
    end
    if w.nm > 0 then
        redis.call('HSET', k_meta, unpack(w.meta, 1, w.nm))
    end
end

local function meta_put(k_task, k_meta, id, m)
    local w = record_writes()
    record_write(w, id, m)
    record_flush(w, k_task, k_meta)
end

-- Priorities. A pending task of priority 0 (the default) waits in the
-- queue's `pending` list; one of priority 1-9 waits in the queue's `prio`
-- sorted set, which acquire.lua takes from first (lowest score first). Its
-- score puts each level in a band of its own, highest priority first, and
-- orders a level first in, first out: the back of a level is its highest
-- score + 1, its front its lowest - 1, starting from the middle of an
-- empty band, so either end has 2^40 places before it meets a neighbour.
-- Scores stay below 2^45: exact as doubles, and written with %.0f because
-- Redis would get Lua's 14-digit %g otherwise.
--
-- The set's key is the pending list's with `prio` for `pending`: the same
-- queue, so the same hash tag and Cluster slot; scripts build it here
-- instead of every caller passing one more key.

local PRIO_BAND = 2199023255552 -- 2^41
local PRIO_MID = 1099511627776 -- 2^40

local function prio_key(k_pending)
    return string.sub(k_pending, 1, -8) .. 'prio'
end

-- Adds `ids` of priority `p` (1-9) to set `k_prio`, at the back of their
-- level in order, or (front) at its front, the last of `ids` first, as
-- RPUSH puts them in front of a list.
local function prio_push(k_prio, p, ids, front)
    local low = (9 - p) * PRIO_BAND
    local lo = string.format('%.0f', low)
    local hi = '(' .. string.format('%.0f', low + PRIO_BAND)
    local at, step
    if front then
        local edge = redis.call('ZRANGEBYSCORE', k_prio, lo, hi, 'WITHSCORES', 'LIMIT', 0, 1)
        at, step = tonumber(edge[2]) or (low + PRIO_MID + 1), -1
    else
        local edge = redis.call('ZREVRANGEBYSCORE', k_prio, hi, lo, 'WITHSCORES', 'LIMIT', 0, 1)
        at, step = tonumber(edge[2]) or (low + PRIO_MID - 1), 1
    end
    local args, n = {}, 0
    for _, id in ipairs(ids) do
        at = at + step
        args[n + 1] = string.format('%.0f', at)
        args[n + 2] = id
        n = n + 2
    end
    redis.call('ZADD', k_prio, unpack(args))
end

-- Makes `ids` pending in the queue whose list is `k_pending`, each at its
-- priority (`prios[i]`, or 0 for all when `prios` is nil): at the back of
-- its level, or (front) at its front. Priority-0 ids take one LPUSH (or
-- RPUSH), the others one ZADD per level they hold.
local function pend(k_pending, ids, prios, front)
    local plain, levels, np = ids, nil, #ids
    if prios then
        plain, np = {}, 0
        for i, id in ipairs(ids) do
            local p = prios[i] or 0
            if p > 0 then
                levels = levels or {}
                local level = levels[p]
                if not level then
                    level = {}
                    levels[p] = level
                end
                level[#level + 1] = id
            else
                np = np + 1
                plain[np] = id
            end
        end
    end
    if np > 0 then
        if front then
            redis.call('RPUSH', k_pending, unpack(plain, 1, np))
        else
            redis.call('LPUSH', k_pending, unpack(plain, 1, np))
        end
    end
    if levels then
        local k_prio = prio_key(k_pending)
        for p = 9, 1, -1 do
            if levels[p] then
                prio_push(k_prio, p, levels[p], front)
            end
        end
    end
end

-- How many entries wait in the queue whose list is `k_pending`, both kinds.
local function pending_count(k_pending)
    return redis.call('LLEN', k_pending) + redis.call('ZCARD', prio_key(k_pending))
end

-- Takes pending task `id` of priority `p` out of the line it waits in
-- (LREM walks the list; a priority's set finds it by name).
local function unpend(k_pending, id, p)
    if p > 0 then
        redis.call('ZREM', prio_key(k_pending), id)
    else
        redis.call('LREM', k_pending, 0, id)
    end
end

-- Drops every trace of finished tasks `ids` (a list of at most a few
-- thousand) from the record hashes: one HDEL per hash, not per task.
local function forget_all(k_task, k_meta, k_progress, k_error, ids)
    if #ids == 0 then
        return
    end
    redis.call('HDEL', k_task, unpack(ids))
    redis.call('HDEL', k_meta, unpack(ids))
    redis.call('HDEL', k_progress, unpack(ids))
    redis.call('HDEL', k_error, unpack(ids))
end

-- Keeps at most `max` members in finished set `set` (oldest dropped first,
-- with their records), in steps small enough for `unpack`. Returns how many
-- were dropped.
local function bound(set, max, k_task, k_meta, k_progress, k_error)
    local excess = redis.call('ZCARD', set) - max
    local dropped = 0
    while excess > 0 do
        local popped = redis.call('ZPOPMIN', set, math.min(excess, 1000))
        -- ZPOPMIN answers member, score, member, score, ...
        local ids, n = {}, 0
        for i = 1, #popped, 2 do
            n = n + 1
            ids[n] = popped[i]
        end
        if n == 0 then
            break
        end
        forget_all(k_task, k_meta, k_progress, k_error, ids)
        dropped = dropped + n
        excess = excess - n
    end
    return dropped
end

-- Adds `n` to a tenant's count of queued tasks (pending, scheduled,
-- retrying), the count enqueue.lua checks max_queued against.
local function requeue(k_queued, n)
    if n > 0 then
        redis.call('INCRBY', k_queued, n)
    end
end

-- Takes `n` off that count, never below zero (a count damaged by hand must
-- not turn into room past the quota).
local function unqueue(k_queued, n)
    if n > 0 and redis.call('DECRBY', k_queued, n) < 0 then
        redis.call('SET', k_queued, 0)
    end
end

-- The usage counters summed by `bill` (peak_memory_bytes is a maximum).
local USAGE_SUMS = {'calls', 'fuel', 'wall_us', 'instantiate_us', 'completed', 'retried', 'dead'}

-- Adds `u` (a table of the counters above, and peak_memory_bytes) to a
-- tenant's usage of one day (a hash that expires `ttl` seconds after it is
-- made). Billing never fails the step it is part of: an increment that
-- would pass 2^63 is dropped (redis.pcall), the rest applies. Sums are Lua
-- numbers, exact below 2^53 per call of a script. A counter whose new value
-- is what was just added was absent: the hash may be new, so its expiry is
-- set then (at worst a day's key has it set again when a counter appears
-- late), instead of asking for its TTL on every call.
local function bill(k_usage, u, ttl)
    local fresh = false
    for _, field in ipairs(USAGE_SUMS) do
        local v = u[field]
        if v and v > 0 then
            if redis.pcall('HINCRBY', k_usage, field, string.format('%.0f', v)) == v then
                fresh = true
            end
        end
    end
    local peak = u.peak_memory_bytes
    if peak and peak > 0 then
        local was = tonumber(redis.call('HGET', k_usage, 'peak_memory_bytes')) or 0
        if peak > was then
            redis.call('HSET', k_usage, 'peak_memory_bytes', string.format('%.0f', peak))
        end
    end
    if fresh then
        redis.call('EXPIRE', k_usage, ttl)
    end
end

-- Reads the five metering values of one stored call batch from ARGV,
-- starting at `at`: calls, fuel, wall_us, instantiate_us,
-- peak_memory_bytes (empty strings count as 0), into `u`.
local function add_calls(u, at)
    local calls = tonumber(ARGV[at])
    if not calls or calls <= 0 then
        return
    end
    u.calls = (u.calls or 0) + calls
    u.fuel = (u.fuel or 0) + (tonumber(ARGV[at + 1]) or 0)
    u.wall_us = (u.wall_us or 0) + (tonumber(ARGV[at + 2]) or 0)
    u.instantiate_us = (u.instantiate_us or 0) + (tonumber(ARGV[at + 3]) or 0)
    local peak = tonumber(ARGV[at + 4]) or 0
    if peak > (u.peak_memory_bytes or 0) then
        u.peak_memory_bytes = peak
    end
end

-- Brings `queue`'s entry in its tenant's due index forward to `at` (µs),
-- adding it if missing. Every script that gives a queue something to do
-- later (a delayed task, a lease) and does not settle the entry exactly
-- calls this in the same step, so the index is never later than the
-- queue's work; it may be earlier (a lease extended by a heartbeat, a
-- delayed task taken early by acquire), and then maintenance finds nothing
-- yet and stores the true time.
local function due_by(k_due, queue, at)
    redis.call('ZADD', k_due, 'LT', at, queue)
end

-- Sets queue `q`'s entry in its tenant's due index to the earliest time
-- the queue needs maintenance: its first delayed or retrying task, its
-- first lease expiry, its first finished record's retention time
-- (`completed_ttl` and `dead_ttl` µs after it finished); removes the entry
-- when there is none, and then, if the queue holds no record or entry at
-- all, takes it out of the tenant's queue set (it no longer counts against
-- max_queues). Exact: only for scripts that hold the whole queue at once.
--
-- q: {name, pending, active, scheduled, completed, dead, cancelled, task,
-- meta} (keys)
local function settle(k_due, k_queues, q, completed_ttl, dead_ttl)
    local at = nil
    for _, set in ipairs({{q.scheduled, 0}, {q.active, 0}, {q.completed, completed_ttl},
        {q.dead, dead_ttl}, {q.cancelled, dead_ttl}}) do
        local first = redis.call('ZRANGE', set[1], 0, 0, 'WITHSCORES')
        if first[2] then
            local t = tonumber(first[2]) + set[2]
            if not at or t < at then
                at = t
            end
        end
    end
    if at then
        redis.call('ZADD', k_due, at, q.name)
        return
    end
    redis.call('ZREM', k_due, q.name)
    if redis.call('HLEN', q.task) == 0 and redis.call('HLEN', q.meta) == 0
        and pending_count(q.pending) == 0 then
        redis.call('SREM', k_queues, q.name)
    end
end

-- Whether metadata `m` is a lease under `token` (active, with or without
-- a cancel asked for).
local function leased(m, token)
    return m and m.token == token and (m.state == 'a' or m.state == 'k')
end

-- Takes `n` off a queue's count of retrying tasks, never below zero.
local function unretry(k_retrying, n)
    if n > 0 and redis.call('DECRBY', k_retrying, n) <= 0 then
        redis.call('DEL', k_retrying)
    end
end

-- The error JSON of a task cancelled while handler `handler` ran (or
-- before it ran, when `handler` is nil).
local function cancel_error(message, handler)
    return cjson.encode({
        kind = 'cancelled',
        message = message,
        retryable = false,
        handler_index = handler,
    })
end

-- Workflows (see workflow.rs; the record's fields are listed in keys.rs).
-- These mirror workflow::Progress, step for step.

-- Ends workflow `flow_id` (record k_flow) in `state` (c or f) at `now`.
local function flow_end(k_flow, k_flows, flow_id, state, now)
    redis.call('HSET', k_flow, 'st', state, 'fin', now)
    redis.call('ZADD', k_flows, now, flow_id)
end

-- Step `i` of workflow `flow_id` ran as task `id` and ended: completed
-- (ok) with its output JSON in `payload`, or failed with its error JSON.
-- Only a step enqueued under that same id counts (a repeat or a stray
-- report changes nothing). A completed step's successors that wait for
-- nothing more become ready (x:s = q, an entry in k_ready); a failed one
-- fails the workflow at once, or (policy w) skips everything after it.
-- Returns true when a step became ready.
local function flow_step_ended(k_flow, k_ready, k_flows, flow_id, i, id, ok, payload, now)
    if redis.call('HGET', k_flow, 'x:' .. i) ~= 'e' .. id then
        return false
    end
    if ok then
        redis.call('HSET', k_flow, 'x:' .. i, 'c', 'r:' .. i, payload)
    else
        redis.call('HSET', k_flow, 'x:' .. i, 'd')
        redis.call('HSETNX', k_flow, 'err', '{"task_id":"' .. id .. '","error":' .. payload .. '}')
    end
    if redis.call('HGET', k_flow, 'st') ~= 'r' then
        return false
    end
    local left = redis.call('HINCRBY', k_flow, 'left', -1)
    local readied = false
    if ok then
        local next_steps = redis.call('HGET', k_flow, 's:' .. i)
        if next_steps then
            for s in string.gmatch(next_steps, '%d+') do
                if redis.call('HINCRBY', k_flow, 'w:' .. s, -1) <= 0
                    and redis.call('HEXISTS', k_flow, 'x:' .. s) == 0 then
                    redis.call('HSET', k_flow, 'x:' .. s, 'q')
                    redis.call('ZADD', k_ready, now, flow_id .. ':' .. s)
                    readied = true
                end
            end
        end
    elseif redis.call('HGET', k_flow, 'mode') == 'f' then
        flow_end(k_flow, k_flows, flow_id, 'f', now)
        return false
    else
        local stack, depth = {i}, 1
        while depth > 0 do
            local j = stack[depth]
            stack[depth] = nil
            depth = depth - 1
            local next_steps = redis.call('HGET', k_flow, 's:' .. j)
            if next_steps then
                for s in string.gmatch(next_steps, '%d+') do
                    if redis.call('HEXISTS', k_flow, 'x:' .. s) == 0 then
                        redis.call('HSET', k_flow, 'x:' .. s, 'k')
                        left = redis.call('HINCRBY', k_flow, 'left', -1)
                        depth = depth + 1
                        stack[depth] = s
                    end
                end
            end
        end
    end
    if left <= 0 then
        local state = 'c'
        if redis.call('HEXISTS', k_flow, 'err') == 1 then
            state = 'f'
        end
        flow_end(k_flow, k_flows, flow_id, state, now)
    end
    return readied
end

-- Task `id` (decoded record `m`) of the tenant whose keys start with
-- `tenant_base` died or was cancelled with `error` outside an ack: if it is
-- a workflow step, its workflow hears of it as from an ack. Only the task's
-- JSON says which workflow, so the workflow's keys are built here (they
-- are the tenant's, in the same slot).
local function flow_step_failed(tenant_base, m, id, error, now)
    if not m or not string.find(record_json(m), '"workflow"', 1, true) then
        return
    end
    local ok, task = pcall(cjson.decode, record_json(m))
    if ok and type(task) == 'table' and type(task.workflow) == 'table' then
        local flow = tostring(task.workflow.id)
        flow_step_ended(tenant_base .. ':flow-' .. flow, tenant_base .. ':flow-ready',
            tenant_base .. ':flows', flow, string.format('%d', task.workflow.step), id, false,
            error, now)
    end
end
