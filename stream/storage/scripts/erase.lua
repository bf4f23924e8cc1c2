-- erase: remove one user from their state shard, everywhere the worker keeps them, and remember
-- the erasure (a hash of the id) so late or replayed events cannot bring the profile back. The
-- aliases of anonymous ids merged into the user live in their own shards: the store removes them
-- (and suppresses those ids) before calling this.
--
-- Every key is built by stream/storage/keys.py and passed in KEYS; this script builds none.
-- KEYS[1] state   KEYS[2] profile   KEYS[3] alias   (of the user)
-- KEYS[4] privacy:erased   KEYS[5] due   KEYS[6] due:inflight   KEYS[7] rank:r   KEYS[8] rank:f   KEYS[9] rank:m
-- KEYS[10 ..]   the audience sets the state says the user is in   (all of the user's shard)
-- ARGV[1] user id   ARGV[2] its erased token   ARGV[3] the state version the caller read
-- Returns false when the state's version moved since the caller read it (read again), else what
-- was removed: key names, and 'KEY member' for sorted-set entries.
local uid, token, ver = ARGV[1], ARGV[2], ARGV[3]
if (redis.call('HGET', KEYS[1], 'ver') or '') ~= ver then return false end
local removed = {}
for k = 10, #KEYS do
  if redis.call('SREM', KEYS[k], uid) == 1 then table.insert(removed, KEYS[k]) end
end
for k = 1, 3 do
  if redis.call('DEL', KEYS[k]) == 1 then table.insert(removed, KEYS[k]) end
end
for k = 5, 9 do
  if redis.call('ZREM', KEYS[k], uid) == 1 then table.insert(removed, KEYS[k] .. ' member') end
end
redis.call('SADD', KEYS[4], token)
return removed
