-- advance_clock: move an event-time clock forward (never backwards).
--
-- KEYS[1] the clock: clock, or clock:timed (built by stream/storage/keys.py)
-- KEYS[2] optional: a sorted set whose lowest score caps the new value (due:shards for
--         clock:timed: a drain bounded per tick can stop short of the watermark, and every user
--         due before the earliest indexed due time has been evaluated)
-- ARGV[1] the new clock, formatted '%.6f'
-- Returns the clock after the call.
local t = ARGV[1]
if KEYS[2] then
  local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if head[2] ~= nil and tonumber(head[2]) < tonumber(t) then
    t = string.format('%.6f', tonumber(head[2]))
  end
end
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(t) > c then
  redis.call('SET', KEYS[1], t)
  return t
end
return tostring(c)
