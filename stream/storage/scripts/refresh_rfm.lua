-- refresh_rfm: recompute the RFM quintile thresholds from the population rank sets; the version
-- moves only when a threshold changed, so every worker agrees on one set per version.
-- The quintile rule lives here only: cut point k (1..4) of n ranked users is the score at
-- 0-based rank ceil(k * n / 5) - 1 (no cut points while a set is empty).
--
-- KEYS[1] rank:r   KEYS[2] rank:f   KEYS[3] rank:m   KEYS[4] rfm:thresholds (built by stream/storage/keys.py)
-- ARGV[1] computed_at (the time of the refresh)
-- Returns the thresholds version.
local out = {}
for j, m in ipairs({'r', 'f', 'm'}) do
  local key = KEYS[j]
  local n = redis.call('ZCARD', key)
  local ts = {}
  if n > 0 then
    for k = 1, 4 do
      local idx = math.ceil(k * n / 5) - 1
      local r = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
      table.insert(ts, r[2])
    end
  end
  out[m] = table.concat(ts, ',')
end
local old = redis.call('HMGET', KEYS[4], 'r', 'f', 'm')
if old[1] ~= out.r or old[2] ~= out.f or old[3] ~= out.m then
  redis.call('HSET', KEYS[4], 'r', out.r, 'f', out.f, 'm', out.m, 'computed_at', ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'version', 1)
end
return redis.call('HGET', KEYS[4], 'version')
