-- stats.lua: counts of one queue's tasks by state, read at one instant.
--
-- KEYS[1] pending    (list; raw entries waiting to be parsed count too)
-- KEYS[2] scheduled  (zset)
-- KEYS[3] active     (zset)
-- KEYS[4] completed  (zset)
-- KEYS[5] dead       (zset)
--
-- ARGV none
--
-- Returns {pending, scheduled, active, completed, dead}

return {
    redis.call('LLEN', KEYS[1]),
    redis.call('ZCARD', KEYS[2]),
    redis.call('ZCARD', KEYS[3]),
    redis.call('ZCARD', KEYS[4]),
    redis.call('ZCARD', KEYS[5]),
}
