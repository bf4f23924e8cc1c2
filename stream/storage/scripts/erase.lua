-- erase: remove one user everywhere the worker keeps them, and remember the erasure (a hash of
-- the id) so late or replayed events cannot bring the profile back.
--
-- Every key is built by stream/storage/keys.py and passed in KEYS; this script builds none.
-- KEYS[1] state   KEYS[2] profile   KEYS[3] alias   (of the user)
-- KEYS[4] privacy:erased   KEYS[5] due   KEYS[6] due:inflight   KEYS[7] rank:r   KEYS[8] rank:f   KEYS[9] rank:m
-- KEYS[10 .. 9 + ARGV[4]]   the audience sets the state says the user is in
-- KEYS[after those]         aliases of the anonymous ids merged into the user, one per ARGV[5..]
-- ARGV[1] user id   ARGV[2] its erased token   ARGV[3] the state version the caller read
-- ARGV[4] number of audience keys   ARGV[5..] erased tokens of the merged anonymous ids
-- Returns false when the state's version moved since the caller read it (read again), else what
-- was removed: key names, and 'KEY member' for sorted-set entries.
local uid, token, ver = ARGV[1], ARGV[2], ARGV[3]
if (redis.call('HGET', KEYS[1], 'ver') or '') ~= ver then return false end
local audiences = tonumber(ARGV[4])
local removed = {}
local doomed = {KEYS[1], KEYS[2], KEYS[3]}
for k = 10, 9 + audiences do
  if redis.call('SREM', KEYS[k], uid) == 1 then table.insert(removed, KEYS[k]) end
end
-- anonymous ids merged into the user: their aliases go, and they are suppressed too
for j = 5, #ARGV do
  table.insert(doomed, KEYS[9 + audiences + (j - 4)])
  redis.call('SADD', KEYS[4], ARGV[j])
end
for _, key in ipairs(doomed) do
  if redis.call('DEL', key) == 1 then table.insert(removed, key) end
end
for k = 5, 9 do
  if redis.call('ZREM', KEYS[k], uid) == 1 then table.insert(removed, KEYS[k] .. ' member') end
end
redis.call('SADD', KEYS[4], token)
return removed
