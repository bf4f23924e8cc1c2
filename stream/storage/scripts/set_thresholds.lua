-- set_thresholds: store newly computed RFM quintile thresholds; the version moves only when a
-- threshold changed, so every worker agrees on one set per version. The score ranges whose users
-- must be re-scored are stored with them ('pending') until a worker has made those users due
-- (then it deletes the field), so a refresh interrupted in between is completed by the next one.
--
-- KEYS[1] rfm:thresholds   (built by stream/storage/keys.py)
-- ARGV[1] r   ARGV[2] f   ARGV[3] m   (comma-separated cut points)   ARGV[4] computed_at
-- ARGV[5] the ranges to re-score (JSON, as mark_due.lua's ARGV)
-- Returns {thresholds version, 1 if they changed else 0}.
local old = redis.call('HMGET', KEYS[1], 'r', 'f', 'm')
if old[1] == ARGV[1] and old[2] == ARGV[2] and old[3] == ARGV[3] then
  return {redis.call('HGET', KEYS[1], 'version') or '0', 0}
end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'f', ARGV[2], 'm', ARGV[3], 'computed_at', ARGV[4], 'pending', ARGV[5])
return {tostring(redis.call('HINCRBY', KEYS[1], 'version', 1)), 1}
