-- advance_timed: record how far the event-time path has evaluated every user due (never back).
--
-- KEYS[1] clock:timed   KEYS[2] due:shards (the due index; built by stream/storage/keys.py)
-- ARGV[1] the watermark the time-driven path has just evaluated up to, formatted '%.6f'
-- The value is the lower of the watermark and the earliest due score still indexed (a drain
-- bounded per tick can stop short of the watermark): every user due before it has been
-- evaluated, so every churn label with an earlier deadline has been written (the trainer learns
-- up to it). Returns the value after the call.
local t = tonumber(ARGV[1])
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if head[2] ~= nil and tonumber(head[2]) < t then
  t = tonumber(head[2])
end
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if t > c then
  redis.call('SET', KEYS[1], string.format('%.6f', t))
  return string.format('%.6f', t)
end
return tostring(c)
