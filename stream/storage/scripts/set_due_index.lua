-- set_due_index: record each state shard's earliest due score in the due index after a claim,
-- unless a write lowered it since the claimer read it (then the lower value stays: a shard is
-- at worst visited once too often, never skipped; writers only lower it, with ZADD LT).
--
-- KEYS[1] due:shards   (the due index; built by stream/storage/keys.py)
-- ARGV[1], ARGV[2], ARGV[3]   shard, the score the claimer read ('' when absent), the earliest
-- due score left in the shard ('' when none); then the same three for each further shard
-- Returns how many entries were set or removed.
local changed = 0
for i = 1, #ARGV, 3 do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if tonumber(cur) == tonumber(ARGV[i + 1]) then
    if ARGV[i + 2] == '' then
      changed = changed + redis.call('ZREM', KEYS[1], ARGV[i])
    else
      redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i])
      changed = changed + 1
    end
  end
end
return changed
