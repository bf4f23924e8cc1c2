-- advance_clock: move the event-time clock forward (never backwards).
--
-- KEYS[1] clock (built by stream/storage/keys.py)
-- ARGV[1] the new clock, formatted '%.6f'
-- Returns the clock after the call.
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > c then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return tostring(c)
