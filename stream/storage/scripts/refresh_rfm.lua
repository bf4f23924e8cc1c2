-- refresh_rfm: recompute the RFM quintile thresholds from the population rank sets; the version
-- moves only when a threshold changed, so every worker agrees on one set per version.
-- The quintile rule lives here only: cut point k (1..4) of n ranked users is the score at
-- 0-based rank ceil(k * n / 5) - 1 (no cut points while a set is empty).
-- When a cut point moves, every user whose metric lies between its old and new value (the only
-- users whose score can change) is made due now, so the time-driven path re-scores them.
--
-- KEYS[1] rank:r   KEYS[2] rank:f   KEYS[3] rank:m   KEYS[4] rfm:thresholds   KEYS[5] due
-- (built by stream/storage/keys.py)
-- ARGV[1] computed_at (the time of the refresh)
-- Returns {thresholds version, users made due}.
local out, cuts = {}, {}
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
  cuts[j] = ts
end
local old = redis.call('HMGET', KEYS[4], 'r', 'f', 'm')
local marked = 0
if old[1] ~= out.r or old[2] ~= out.f or old[3] ~= out.m then
  for j = 1, 3 do
    local before = {}
    for v in string.gmatch(old[j] or '', '[^,]+') do table.insert(before, v) end
    for k = 1, 4 do
      local a, b = tonumber(before[k]), tonumber(cuts[j][k])
      if a ~= b then
        -- a cut point appeared or vanished: every ranked user may change score
        local lo, hi = '-inf', '+inf'
        if a ~= nil and b ~= nil then  -- the stored strings, exactly as ranked
          lo, hi = before[k], cuts[j][k]
          if a > b then lo, hi = hi, lo end
        end
        for _, uid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[j], lo, hi)) do
          marked = marked + redis.call('ZADD', KEYS[5], 'LT', 'CH', 0, uid)
        end
      end
    end
  end
  redis.call('HSET', KEYS[4], 'r', out.r, 'f', out.f, 'm', out.m, 'computed_at', ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'version', 1)
end
return {redis.call('HGET', KEYS[4], 'version'), marked}
