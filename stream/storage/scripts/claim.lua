-- claim: move users due by ARGV[1] from one state shard's due set to its in-flight set with a
-- wall-clock lease. Every write of a user removes it from in-flight; a worker that dies
-- mid-evaluation leaves its lease to expire, and the next claim puts those users back at the
-- head of the due set.
--
-- KEYS[1] due   KEYS[2] due:inflight   (of one state shard; built by stream/storage/keys.py)
-- ARGV[1] due up to (event or wall time)   ARGV[2] at most this many users
-- ARGV[3] wall time now (leases up to it have expired)   ARGV[4] lease expiry (wall time)
-- Returns {flat {user, due score, ...}, the earliest due score left ('' when none)}; a score of
-- 0 means "re-evaluate now" (forced).
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
for _, u in ipairs(expired) do
  redis.call('ZREM', KEYS[2], u)
  redis.call('ZADD', KEYS[1], 0, u)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('ZADD', KEYS[2], ARGV[4], due[i])
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {due, head[2] or ''}
