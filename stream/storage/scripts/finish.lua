-- finish: what a batch records once per store, after every shard's write succeeded: the
-- event-time clock, the input partitions' progress and the batch-level counters.
--
-- KEYS[1] clock   KEYS[2] clock:parts   KEYS[3] stats   KEYS[4] due:shards (the due index)
-- (built by stream/storage/keys.py; tag {g})
-- ARGV[1] meta (JSON): clock: event time or false, parts: flat {field, value} of partition
--         progress (decided in Python: stream/storage/store.py progress_updates),
--         stats: {counter: increment}, due: flat {shard, earliest due score written there}
-- Returns 1.
local meta = cjson.decode(ARGV[1])
if #meta.parts > 0 then
  redis.call('HSET', KEYS[2], unpack(meta.parts))
end
-- the clock is the largest event time any worker applied: it never moves backwards
if type(meta.clock) == 'number' then
  local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
  if meta.clock > cur then redis.call('SET', KEYS[1], string.format('%.6f', meta.clock)) end
end
for k, n in pairs(meta.stats) do
  redis.call('HINCRBY', KEYS[3], k, n)
end
-- the due index only moves earlier here (a claim moves it later: set_due_index.lua)
for i = 1, #meta.due, 2 do
  redis.call('ZADD', KEYS[4], 'LT', meta.due[i + 1], meta.due[i])
end
return 1
