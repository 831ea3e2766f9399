-- common.lua: helpers that scripts.rs prepends to every Corral script.
--
-- A task's metadata is one field of the queue's `meta` hash:
--
--   state|attempt|max_attempts|token|updated|run_at|handler|started|worker
--
-- state:        p pending, s scheduled, a active, r retrying, c completed,
--               d dead
-- attempt:      attempts started (counted on acquire)
-- max_attempts: copied from the task, so scripts need not parse its JSON
-- token:        the fencing token; grows by one on every acquire
-- updated:      when the task last changed, µs since the epoch
-- run_at:       when a retry is due (µs), empty if none
-- handler:      the next handler to run (the checkpoint's index)
-- started:      when the current or last attempt started (µs), empty before
-- worker:       the worker holding or last holding the lease (may hold `|`,
--               so it comes last)
--
-- Times are kept as the decimal strings Rust sent (ARGV): Lua's numbers
-- print large integers in exponent form, so scripts never turn a time back
-- into a string, and never read the clock themselves.

local function meta_decode(v)
    if not v then
        return nil
    end
    local s, a, m, t, u, r, h, st, w =
        string.match(v, '^(%a)|(%d+)|(%d+)|(%d+)|(%d*)|(%d*)|(%d+)|(%d*)|(.*)$')
    if not s then
        return nil
    end
    return {
        state = s,
        attempt = tonumber(a),
        max = tonumber(m),
        token = tonumber(t),
        updated = u,
        run_at = r,
        handler = h,
        started = st,
        worker = w,
    }
end

local function meta_encode(m)
    return table.concat({
        m.state,
        string.format('%d', m.attempt),
        string.format('%d', m.max),
        string.format('%d', m.token),
        m.updated,
        m.run_at,
        m.handler,
        m.started,
        m.worker,
    }, '|')
end

local function meta_get(meta_key, id)
    return meta_decode(redis.call('HGET', meta_key, id))
end

local function meta_put(meta_key, id, m)
    redis.call('HSET', meta_key, id, meta_encode(m))
end

-- Drops every trace of finished task `id` from the record hashes.
local function forget(k_task, k_meta, k_progress, k_error, id)
    redis.call('HDEL', k_task, id)
    redis.call('HDEL', k_meta, id)
    redis.call('HDEL', k_progress, id)
    redis.call('HDEL', k_error, id)
end

-- Keeps at most `max` members in finished set `set` (oldest dropped first,
-- with their records). Returns how many were dropped.
local function bound(set, max, k_task, k_meta, k_progress, k_error)
    local excess = redis.call('ZCARD', set) - max
    if excess <= 0 then
        return 0
    end
    local dropped = redis.call('ZPOPMIN', set, excess)
    -- ZPOPMIN answers member, score, member, score, ...
    for i = 1, #dropped, 2 do
        forget(k_task, k_meta, k_progress, k_error, dropped[i])
    end
    return #dropped / 2
end

