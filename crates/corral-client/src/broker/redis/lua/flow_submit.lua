-- flow_submit.lua: stores a new workflow's record and makes its first
-- steps ready, within the tenant's max_workflows, in one atomic step.
--
-- KEYS[1] flows      (zset)  the tenant's workflows by when they ended
-- KEYS[2] flow       (hash)  the new workflow's record
-- KEYS[3] flow-ready (zset)  the tenant's ready workflow steps
--
-- ARGV[1] the workflow's id
-- ARGV[2] the tenant's max_workflows
-- ARGV[3] now (µs)
-- ARGV[4] p, the number of the record's field/value pairs; then the pairs
--         (everything but the first steps' x:i, which this sets)
-- then the indexes of the first steps
--
-- Returns {0} stored
--         {1, n} refused: the tenant has n workflows, max_workflows or more
--         {2} a workflow of this id exists already

local id = ARGV[1]
if redis.call('ZSCORE', KEYS[1], id) or redis.call('EXISTS', KEYS[2]) == 1 then
    return {2}
end
local have = redis.call('ZCARD', KEYS[1])
if have >= tonumber(ARGV[2]) then
    return {1, have}
end
local now = ARGV[3]
local p = tonumber(ARGV[4])
-- In slices: unpack() of too many values overflows Lua's stack.
local slice = 1000
local at = 5
local last = 4 + 2 * p
while at <= last do
    local upto = math.min(at + slice - 1, last)
    redis.call('HSET', KEYS[2], unpack(ARGV, at, upto))
    at = upto + 1
end
local fields, ready = {}, {}
local n = 0
for i = last + 1, #ARGV do
    fields[2 * n + 1] = 'x:' .. ARGV[i]
    fields[2 * n + 2] = 'q'
    ready[2 * n + 1] = now
    ready[2 * n + 2] = id .. ':' .. ARGV[i]
    n = n + 1
    if n == slice / 2 or i == #ARGV then
        redis.call('HSET', KEYS[2], unpack(fields, 1, 2 * n))
        redis.call('ZADD', KEYS[3], unpack(ready, 1, 2 * n))
        n = 0
    end
end
redis.call('ZADD', KEYS[1], '+inf', id)
return {0}
