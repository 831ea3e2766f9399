-- put_schedule.lua: stores one of a tenant's schedules and its next tick,
-- within the tenant's max_schedules (checked here, in the same atomic step,
-- so concurrent puts cannot pass it). Replacing a schedule keeps its place.
--
-- KEYS[1] schedules  (hash) name -> the schedule's record (JSON)
-- KEYS[2] sched-next (zset) name -> next tick (µs)
--
-- ARGV[1] the schedule's name
-- ARGV[2] its record
-- ARGV[3] its next tick (µs), or empty when its timetable has none
-- ARGV[4] the tenant's max_schedules
--
-- Returns {0}          stored
--         {1, have}    refused: a new name, and the tenant has `have`
--                      schedules, its max_schedules

local name = ARGV[1]
if redis.call('HEXISTS', KEYS[1], name) == 0 then
    local have = redis.call('HLEN', KEYS[1])
    if have >= tonumber(ARGV[4]) then
        return {1, have}
    end
end
redis.call('HSET', KEYS[1], name, ARGV[2])
if ARGV[3] ~= '' then
    redis.call('ZADD', KEYS[2], ARGV[3], name)
else
    redis.call('ZREM', KEYS[2], name)
end
return {0}
