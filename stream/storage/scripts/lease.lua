-- lease: take or renew a lease; succeeds when it is free or already ours.
--
-- KEYS[1] the lease (e.g. models:trainer, built by stream/storage/keys.py)
-- ARGV[1] holder   ARGV[2] lease length in milliseconds
-- Returns 1 when the caller holds the lease, else 0.
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
