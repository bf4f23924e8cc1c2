-- mark_due: make due now the users of one state shard whose RFM metric lies in the given score
-- ranges (the users a moved cut point can re-score), so the time-driven path re-scores them.
--
-- KEYS[1] rank:r   KEYS[2] rank:f   KEYS[3] rank:m   KEYS[4] due   (the shard's; built by
-- stream/storage/keys.py)
-- ARGV[1], ARGV[2], ARGV[3]   metric index (1..3), low score, high score ('-inf'/'+inf' allowed);
-- then the same three for each further range
-- Returns how many users were made due (moved earlier).
-- Variadic ZADDs per range (each_chunk), not one per user.
--#include _chunks
local marked = 0
for i = 1, #ARGV, 3 do
  local uids = redis.call('ZRANGEBYSCORE', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  local args = {}
  for _, u in ipairs(uids) do
    table.insert(args, 0)
    table.insert(args, u)
  end
  each_chunk(args, 1000, function(...) marked = marked + redis.call('ZADD', KEYS[4], 'LT', 'CH', ...) end)
end
return marked
