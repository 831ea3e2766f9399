-- flow_advance.lua: enqueues ready steps of one workflow into one queue,
-- each only while its ready entry is there: whoever removes the entry
-- stores the task, so a step is enqueued exactly once however many
-- workers race for it (the one that made it ready, maintenance after a
-- crash). Tasks are stored as fire.lua stores a ready task, within the
-- tenant's max_queued and max_queues; a step they refuse stays ready, as
-- do the steps after it in this call, for a later call.
--
-- KEYS[1] flow-ready (zset)   the tenant's ready workflow steps
-- KEYS[2] flow       (hash)   the workflow's record
-- KEYS[3] pending    (list)   the queue's
-- KEYS[4] task       (hash)   id -> record (see common.lua)
-- KEYS[5] queues     (set)    the tenant's queue names
-- KEYS[6] queued     (string) the tenant's count of queued tasks
-- KEYS[7] cap        (string) the tenant's concurrency cap
-- KEYS[8] meta       (hash)   split records' metadata (see common.lua)
--
-- ARGV[1] the workflow's id
-- ARGV[2] the tenant's max_queued
-- ARGV[3] the tenant's max_queues
-- ARGV[4] the queue's name, as the tenant's queue set holds it
-- ARGV[5] the tenant's max_concurrency, or empty
-- ARGV[6] n; then 3 values per step: its index, its task id, its record
--         (packed by Rust; state p)
--
-- Returns one code per step:
--         0 not ready any more (enqueued already, or the workflow ended:
--           its entry is dropped)
--         1 stored
--         3 refused: the tenant's max_queued (stays ready)
--         4 refused: the tenant's max_queues (stays ready)

local flow_id = ARGV[1]
local n = tonumber(ARGV[6])
local running = redis.call('HGET', KEYS[2], 'st') == 'r'
local queued = tonumber(redis.call('GET', KEYS[6]) or '0') or 0
local max_queued = tonumber(ARGV[2])
local queue = ARGV[4]
local codes = {}
local refused = nil
local writes, ids, prios, marks, members = record_writes(), {}, {}, {}, {}
local stored = 0
for s = 0, n - 1 do
    local base = 7 + s * 3
    local i, id = ARGV[base], ARGV[base + 1]
    local member = flow_id .. ':' .. i
    if refused then
        codes[s + 1] = refused
    elseif not redis.call('ZSCORE', KEYS[1], member) then
        codes[s + 1] = 0
    elseif not running or redis.call('HGET', KEYS[2], 'x:' .. i) ~= 'q' then
        redis.call('ZREM', KEYS[1], member)
        codes[s + 1] = 0
    elseif queued + stored + 1 > max_queued then
        refused = 3
        codes[s + 1] = 3
    elseif stored == 0 and redis.call('SISMEMBER', KEYS[5], queue) == 0
        and redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[3]) then
        refused = 4
        codes[s + 1] = 4
    else
        stored = stored + 1
        record_new(writes, id, ARGV[base + 2])
        ids[stored] = id
        prios[stored] = meta_priority(ARGV[base + 2])
        marks[2 * stored - 1] = 'x:' .. i
        marks[2 * stored] = 'e' .. id
        members[stored] = member
        codes[s + 1] = 1
    end
end
if stored > 0 then
    redis.call('SADD', KEYS[5], queue)
    redis.call('INCRBY', KEYS[6], stored)
    if ARGV[5] ~= '' then
        redis.call('SET', KEYS[7], ARGV[5])
    end
    record_flush(writes, KEYS[4], KEYS[8])
    pend(KEYS[3], ids, prios, false)
    redis.call('HSET', KEYS[2], unpack(marks, 1, 2 * stored))
    redis.call('ZREM', KEYS[1], unpack(members, 1, stored))
end
return codes
