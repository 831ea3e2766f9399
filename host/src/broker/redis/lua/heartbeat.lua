-- heartbeat.lua: extends the leases a worker holds on one queue's tasks.
--
-- KEYS[1] active  (zset)
-- KEYS[2] meta    (hash)
--
-- ARGV[1] new lease expiry (µs)
-- ARGV[2] n; then 2 values per lease: id, token
--
-- Returns the ids whose lease is no longer held (not active under that
-- token); the worker must abandon them.

local lost = {}
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
    local id, token = ARGV[3 + i * 2], tonumber(ARGV[4 + i * 2])
    local m = meta_get(KEYS[2], id)
    if m and m.state == 'a' and m.token == token then
        redis.call('ZADD', KEYS[1], ARGV[1], id)
    else
        lost[#lost + 1] = id
    end
end
return lost
