-- stats.lua: counts of one queue's tasks by state, read at one instant.
--
-- KEYS[1] pending    (list; raw entries waiting to be parsed count too,
--                    and so does the priorities' set beside it)
-- KEYS[2] scheduled  (zset)
-- KEYS[3] active     (zset)
-- KEYS[4] completed  (zset)
-- KEYS[5] dead       (zset)
-- KEYS[6] cancelled  (zset)
-- KEYS[7] retrying   (string) how many of scheduled are retrying
-- KEYS[8] paused     (set)    the tenant's paused queue names
--
-- ARGV[1] a minute ago (µs): finished sets are scored by finish time
-- ARGV[2] the queue's name, as the tenant's sets hold it
--
-- Returns {pending, scheduled, active, completed, dead, cancelled,
--          retrying, paused (0/1), completed in the last minute,
--          died in the last minute}

local minute_ago = '(' .. ARGV[1]
return {
    pending_count(KEYS[1]),
    redis.call('ZCARD', KEYS[2]),
    redis.call('ZCARD', KEYS[3]),
    redis.call('ZCARD', KEYS[4]),
    redis.call('ZCARD', KEYS[5]),
    redis.call('ZCARD', KEYS[6]),
    tonumber(redis.call('GET', KEYS[7]) or '0') or 0,
    redis.call('SISMEMBER', KEYS[8], ARGV[2]),
    redis.call('ZCOUNT', KEYS[4], minute_ago, '+inf'),
    redis.call('ZCOUNT', KEYS[5], minute_ago, '+inf'),
}
