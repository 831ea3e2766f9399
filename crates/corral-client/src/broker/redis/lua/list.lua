-- list.lua: one page of a queue's tasks in one state, newest first, with
-- their records.
--
-- Reads the line or set that holds the state (pending: the list from its
-- newest end, then the priorities' set from its last-taken end, so the
-- whole line read backwards; the others: their sorted set, highest score
-- first) from
-- `offset`, keeps the entries whose record is in the state asked (the
-- scheduled set holds scheduled and retrying tasks, the active set active
-- ones with and without a cancel asked for, the pending list may hold
-- stale ids and raw entries), and stops once it has `limit` or has looked
-- at `scan` entries. Read-only, but for converting records of an earlier
-- version (see `records` in common.lua).
--
-- KEYS[1] the line or set (list for p, zset otherwise)
-- KEYS[2] task      (hash) id -> record (see common.lua)
-- KEYS[3] meta      (hash) split records' metadata (see common.lua)
-- KEYS[4] progress  (hash)
-- KEYS[5] error     (hash)
--
-- ARGV[1] the state: p, s, a, r, c, d or x
-- ARGV[2] offset into the line or set
-- ARGV[3] most tasks to return
-- ARGV[4] most entries to look at
--
-- Returns {next, then 4 values per task: id, record, checkpoint JSON or
--          false, error JSON or false}
--   next: the offset to go on from, or -1 when the line or set is done

local state, offset = ARGV[1], tonumber(ARGV[2])
local limit, scan = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {-1}
local entries
if state == 'p' then
    entries = redis.call('LRANGE', KEYS[1], offset, offset + scan - 1)
    if #entries < scan then
        local skip = math.max(offset - redis.call('LLEN', KEYS[1]), 0)
        local more = redis.call('ZREVRANGE', prio_key(KEYS[1]), skip,
            skip + scan - #entries - 1)
        for _, id in ipairs(more) do
            entries[#entries + 1] = id
        end
    end
else
    entries = redis.call('ZREVRANGE', KEYS[1], offset, offset + scan - 1)
end
local found_records = records_by_id(KEYS[2], KEYS[3], entries)
local found = 0
for i, id in ipairs(entries) do
    if found == limit then
        out[1] = offset + i - 1
        return out
    end
    local m = found_records[id]
    local s = m and m.state
    if s == state or (state == 'a' and s == 'k') then
        found = found + 1
        out[#out + 1] = id
        out[#out + 1] = meta_encode(m)
        out[#out + 1] = redis.call('HGET', KEYS[4], id)
        out[#out + 1] = redis.call('HGET', KEYS[5], id)
    end
end
if #entries == scan then
    out[1] = offset + scan
end
return out
