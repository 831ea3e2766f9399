-- ack.lua: finishes leased tasks of one queue, each with its outcome.
--
-- Each outcome is checked against the task's fencing token: a worker whose
-- lease moved on gets code 1 and changes nothing. An outcome already
-- applied under the same token (a retried ack whose first reply was lost)
-- answers 0 again without applying twice. Finished sets are then cut to
-- their bounds, oldest first. Writes are batched (one command per key for
-- all outcomes), as each redis.call from Lua has a fixed cost. A retry or a
-- release puts the task back among the tenant's queued tasks (KEYS[10]).
-- The queue's entry in the due index (KEYS[11]) comes forward to any retry
-- or retention time this call created; when the call ended the queue's
-- last lease, the entry is set exactly instead, so a queue that fell idle
-- is not visited for a lease it no longer has. (Settling exactly on every
-- call would cost four reads per call; while leases remain, an early entry
-- costs at most one maintenance visit per lease period.)
--
-- KEYS[1] pending    (list)
-- KEYS[2] active     (zset)
-- KEYS[3] scheduled  (zset)
-- KEYS[4] completed  (zset)
-- KEYS[5] dead       (zset)
-- KEYS[6] task       (hash)   id -> record (see common.lua)
-- KEYS[7] meta       (hash)   split records' metadata (see common.lua)
-- KEYS[8] progress   (hash)
-- KEYS[9] error      (hash)
-- KEYS[10] queued    (string) the tenant's count of queued tasks
-- KEYS[11] due       (zset)   the tenant's due index
-- KEYS[12] queues    (set)    the tenant's queue names (a queue left
--                             without records leaves it)
-- KEYS[13] usage     (hash)   the tenant's usage of the day: the calls each
--                             completed task's final checkpoint adds, and
--                             tasks completed, retried and died
-- KEYS[14] cancelled (zset)
-- KEYS[15] retrying  (string) the queue's count of retrying tasks
-- KEYS[16] running   (zset)   the tenant's active ids over all queues
-- KEYS[17] capped    (set)    the tenant's queue names held back by its
--                             cap: a call that frees a slot returns them
--                             (and clears the set) so their workers wake
-- KEYS[18] flow-ready (zset)  the tenant's ready workflow steps
-- KEYS[19] flows     (zset)   the tenant's workflows by when they ended
-- KEYS[20...]        (hash)   the records of the workflows the outcomes'
--                             tasks are steps of
--
-- A task whose cancel was asked for (state k) that comes back as a retry
-- or a release is cancelled instead: it never runs again.
-- ARGV[1] now (µs)
-- ARGV[2] most completed tasks kept
-- ARGV[3] most dead tasks kept
-- ARGV[4] how long completed tasks are kept (µs)
-- ARGV[5] how long dead tasks are kept (µs)
-- ARGV[6] the queue's name, as the tenant's queue set holds it
-- ARGV[7] how long a day's usage is kept (s)
-- ARGV[8] n, the number of outcomes; then 11 values per outcome:
--         id, token, kind, JSON, due, handler, and the calls the final
--         checkpoint adds (c only, else empty): calls, fuel, wall_us,
--         instantiate_us, peak_memory_bytes
--   kind c completed: JSON is the final checkpoint, handler its index
--        r retry:     JSON is the error, due when to run again (µs)
--        d dead:      JSON is the error
--        l release:   back to the front of pending, attempt not counted
--        x cancelled: the worker stopped the task; the error is written
--                     here, naming the handler of the last checkpoint
-- then m, the number of outcomes whose task is a workflow step; then 5
--         values per such outcome: its position (1-based), the step's
--         index, the KEYS index of its workflow's record, the workflow's
--         id, and the task's output (its final args map; c only). A step
--         that this call completed, killed or cancelled advances its
--         workflow in this same step (flow_step_ended in common.lua).
--
-- Returns one code per outcome, in order:
--         0 applied (or already applied under this token)
--         1 lease lost
--         then the queue names to wake (KEYS[17]), if any
--         then `/` if a workflow step became ready (queue names hold no /)

local k_pending, k_active, k_scheduled, k_completed, k_dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local k_task, k_meta, k_progress, k_error = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now = ARGV[1]
local max_completed, max_dead = tonumber(ARGV[2]), tonumber(ARGV[3])
local completed_ttl, dead_ttl, queue = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local usage_ttl = ARGV[7]
local n = tonumber(ARGV[8])
local first = 9
local stride = 11
local target = {c = 'c', r = 'r', d = 'd', l = 'p', x = 'x'}

local codes = {}
if n == 0 then
    return codes
end
local ids = {}
for i = 0, n - 1 do
    ids[i + 1] = ARGV[first + i * stride]
end
local metas = records(k_task, k_meta, ids)

local applied = {} -- id -> {token, state} applied by this call
local failed = {} -- id -> the error JSON of a task this call killed or cancelled
-- Argument lists for one batched command per key, with their lengths
-- (counters instead of `#t + 1`: the length operator is not free in Lua).
local writes, active_rem, progress_set, error_del, error_set = record_writes(), {}, {}, {}, {}
local completed_add, scheduled_add, dead_add, released, cancelled_add = {}, {}, {}, {}, {}
local released_prios = {}
local n_cancelled = 0
local n_active, n_progress, n_error_del, n_error_set = 0, 0, 0, 0
local n_completed, n_scheduled, n_dead, n_released = 0, 0, 0, 0
local first_retry = nil
local usage = {}
for i = 0, n - 1 do
    local base = first + i * stride
    local id, token, kind = ARGV[base], tonumber(ARGV[base + 1]), ARGV[base + 2]
    local code = 1
    local done = applied[id]
    if done then
        -- The same task twice in one batch: only a repeat of what was just
        -- applied is accepted.
        if done[1] == token and done[2] == target[kind] then
            code = 0
        end
    else
        local m = metas[i + 1]
        local json = ARGV[base + 3]
        if leased(m, token) and m.state == 'k' and (kind == 'r' or kind == 'l') then
            kind = 'x'
        end
        if kind == 'x' and m then
            -- The checkpoint names the handler that was running.
            json = cancel_error('the task was cancelled while it ran', tonumber(m.handler))
        end
        if leased(m, token) and target[kind] then
            code = 0
            n_active = n_active + 1
            active_rem[n_active] = id
            m.updated = now
            m.state = target[kind]
            if kind == 'c' then
                m.handler = ARGV[base + 5]
                progress_set[n_progress + 1] = id
                progress_set[n_progress + 2] = ARGV[base + 3]
                n_progress = n_progress + 2
                n_error_del = n_error_del + 1
                error_del[n_error_del] = id
                completed_add[n_completed + 1] = now
                completed_add[n_completed + 2] = id
                n_completed = n_completed + 2
                add_calls(usage, base + 6)
            elseif kind == 'r' then
                local due = ARGV[base + 4]
                local at = tonumber(due)
                if not first_retry or at < first_retry then
                    first_retry = at
                end
                m.run_at = due
                error_set[n_error_set + 1] = id
                error_set[n_error_set + 2] = ARGV[base + 3]
                n_error_set = n_error_set + 2
                scheduled_add[n_scheduled + 1] = due
                scheduled_add[n_scheduled + 2] = id
                n_scheduled = n_scheduled + 2
            elseif kind == 'd' then
                failed[id] = ARGV[base + 3]
                error_set[n_error_set + 1] = id
                error_set[n_error_set + 2] = ARGV[base + 3]
                n_error_set = n_error_set + 2
                dead_add[n_dead + 1] = now
                dead_add[n_dead + 2] = id
                n_dead = n_dead + 2
            elseif kind == 'x' then
                failed[id] = json
                error_set[n_error_set + 1] = id
                error_set[n_error_set + 2] = json
                n_error_set = n_error_set + 2
                cancelled_add[n_cancelled + 1] = now
                cancelled_add[n_cancelled + 2] = id
                n_cancelled = n_cancelled + 2
            else
                if m.attempt > 0 then
                    m.attempt = m.attempt - 1
                end
                n_released = n_released + 1
                released[n_released] = id
                released_prios[n_released] = m.priority
            end
            record_write(writes, id, m)
            applied[id] = {token, m.state}
        elseif m and m.token == token and (m.state == target[kind]
            or (m.state == 'x' and (kind == 'r' or kind == 'l'))) then
            code = 0
        end
    end
    codes[i + 1] = code
end

local wake = nil
if n_active > 0 then
    redis.call('ZREM', k_active, unpack(active_rem))
    record_flush(writes, k_task, k_meta)
    if redis.call('ZREM', KEYS[16], unpack(active_rem)) > 0 then
        wake = redis.call('SMEMBERS', KEYS[17])
        if #wake > 0 then
            redis.call('DEL', KEYS[17])
        end
    end
end
if n_progress > 0 then
    redis.call('HSET', k_progress, unpack(progress_set))
end
if n_error_del > 0 then
    redis.call('HDEL', k_error, unpack(error_del))
end
if n_error_set > 0 then
    redis.call('HSET', k_error, unpack(error_set))
end
if n_completed > 0 then
    redis.call('ZADD', k_completed, unpack(completed_add))
    bound(k_completed, max_completed, k_task, k_meta, k_progress, k_error)
end
if n_scheduled > 0 then
    redis.call('ZADD', k_scheduled, unpack(scheduled_add))
end
if n_dead > 0 then
    redis.call('ZADD', k_dead, unpack(dead_add))
    bound(k_dead, max_dead, k_task, k_meta, k_progress, k_error)
end
if n_cancelled > 0 then
    redis.call('ZADD', KEYS[14], unpack(cancelled_add))
    bound(KEYS[14], max_dead, k_task, k_meta, k_progress, k_error)
end
if n_scheduled > 0 then
    redis.call('INCRBY', KEYS[15], n_scheduled / 2)
end
if n_released > 0 then
    -- Back to the front of their line: they were next already.
    pend(k_pending, released, released_prios, true)
end
requeue(KEYS[10], n_scheduled / 2 + n_released)
usage.completed, usage.retried, usage.dead = n_completed / 2, n_scheduled / 2, n_dead / 2
bill(KEYS[13], usage, usage_ttl)
if n_active > 0 and redis.call('ZCARD', k_active) == 0 then
    settle(KEYS[11], KEYS[12], {
        name = queue, pending = k_pending, active = k_active, scheduled = k_scheduled,
        completed = k_completed, dead = k_dead, cancelled = KEYS[14], task = k_task,
        meta = k_meta,
    }, completed_ttl, dead_ttl)
elseif n_active > 0 then
    local at = first_retry
    for _, finished in ipairs({{n_completed, completed_ttl}, {n_dead, dead_ttl},
        {n_cancelled, dead_ttl}}) do
        if finished[1] > 0 then
            local t = tonumber(now) + finished[2]
            if not at or t < at then
                at = t
            end
        end
    end
    if at then
        due_by(KEYS[11], queue, at)
    end
end
local n_codes = n
if wake then
    for i, name in ipairs(wake) do
        codes[n + i] = name
    end
    n_codes = n + #wake
end
local flow_at = first + n * stride
local n_flow = tonumber(ARGV[flow_at] or '0') or 0
local readied = false
for f = 0, n_flow - 1 do
    local b = flow_at + 1 + f * 5
    local id = ARGV[first + (tonumber(ARGV[b]) - 1) * stride]
    local done = applied[id]
    if done and (done[2] == 'c' or failed[id]) then
        local ok = done[2] == 'c'
        local payload = failed[id]
        if ok then
            payload = ARGV[b + 4]
        end
        if flow_step_ended(KEYS[tonumber(ARGV[b + 2])], KEYS[18], KEYS[19], ARGV[b + 3],
            ARGV[b + 1], id, ok, payload, now) then
            readied = true
        end
    end
end
if readied then
    codes[n_codes + 1] = '/'
end
return codes
