-- write: apply one state shard's part of a batch atomically, after a compare-and-set on every
-- user's state version. A batch touching several shards runs this once per shard (pipelined).
--
-- Every key is built by stream/storage/keys.py and passed in KEYS; this script builds none. All
-- keys belong to one state shard (one hash tag, one Redis Cluster slot).
-- KEYS[1] due   KEYS[2] due:inflight   KEYS[3] outbox   KEYS[4] models:examples
-- KEYS[5] rank:r   KEYS[6] rank:f   KEYS[7] rank:m   KEYS[8] stats (the shard's)   KEYS[9] privacy:erased
-- KEYS[10 + 3*(i-1)], +1, +2   state, profile, alias of user i (the i-th entry of meta.users)
-- KEYS[n] for n after those    the shard's audience sets, referenced by index from meta.users
-- ARGV[1]      meta (JSON): users = [{u: user id, h: erased token, v: expected version,
--              a: anonymous, al: alias target or false, del: delete, p: flat profile fields,
--              aa / ar: KEYS indexes of audience sets to add to / remove from, due: due score,
--              ttl: seconds, rk: {r, f, m} rank scores or false, tr: {{topic, value}} triggers,
--              ln: model examples}], aud_ttl: seconds, stats: {counter: increment}
-- ARGV[1 + i]  state blob of user i
-- Returns the user ids whose version moved (then nothing was written), else an empty list.
--#include _chunks
local SHARD_KEYS, PER_USER = 9, 3
local meta = cjson.decode(ARGV[1])
local conflicts = {}
for i, u in ipairs(meta.users) do
  local k = SHARD_KEYS + PER_USER * (i - 1)
  local cur = redis.call('HGET', KEYS[k + 1], 'ver')
  local curv = 0
  if cur then curv = tonumber(cur) end
  -- an erasure since the read counts as a change: the retry sees the user erased, writes nothing
  if curv ~= u.v or redis.call('SISMEMBER', KEYS[9], u.h) == 1 then
    table.insert(conflicts, u.u)
  elseif u.a and not u.del and redis.call('EXISTS', KEYS[k + 3]) == 1 then
    -- merged into a known user since the read: its events now belong there
    table.insert(conflicts, u.u)
  end
end
if #conflicts > 0 then return conflicts end
-- the sorted sets (due, in-flight, ranks) take one variadic command each per script, not one per
-- user: a batch's users are distinct, so the order among them does not matter
local grown = {}
local unleased, undue, due = {}, {}, {}
local ranks, unranked = {{}, {}, {}}, {}
for i, u in ipairs(meta.users) do
  local k = SHARD_KEYS + PER_USER * (i - 1)
  local skey, pkey = KEYS[k + 1], KEYS[k + 2]
  table.insert(unleased, u.u)
  if u.del then
    redis.call('DEL', skey, pkey)
    table.insert(undue, u.u)
    if u.al then
      redis.call('SET', KEYS[k + 3], u.al, 'EX', meta.aud_ttl)
    end
  else
    redis.call('HSET', skey, 'ver', u.v + 1, 'blob', ARGV[1 + i])
    redis.call('EXPIRE', skey, u.ttl)
    redis.call('DEL', pkey)
    if #u.p > 0 then
      redis.call('HSET', pkey, unpack(u.p))
      redis.call('EXPIRE', pkey, u.ttl)
    end
    table.insert(due, u.due)
    table.insert(due, u.u)
  end
  for _, a in ipairs(u.ar) do
    redis.call('SREM', KEYS[a], u.u)
  end
  for _, a in ipairs(u.aa) do
    redis.call('SADD', KEYS[a], u.u)
    grown[a] = true
  end
  for _, tr in ipairs(u.tr) do
    redis.call('XADD', KEYS[3], '*', 't', tr[1], 'k', u.u, 'v', tr[2])
  end
  for _, item in ipairs(u.ln) do
    redis.call('XADD', KEYS[4], '*', 'i', item)
  end
  if type(u.rk) == 'table' then
    for j = 1, 3 do
      table.insert(ranks[j], u.rk[j])
      table.insert(ranks[j], u.u)
    end
  else
    table.insert(unranked, u.u)
  end
end
each_chunk(unleased, 1000, function(...) redis.call('ZREM', KEYS[2], ...) end)
each_chunk(undue, 1000, function(...) redis.call('ZREM', KEYS[1], ...) end)
each_chunk(due, 1000, function(...) redis.call('ZADD', KEYS[1], ...) end)
for j = 1, 3 do
  each_chunk(ranks[j], 1000, function(...) redis.call('ZADD', KEYS[4 + j], ...) end)
  each_chunk(unranked, 1000, function(...) redis.call('ZREM', KEYS[4 + j], ...) end)
end
local ranked = #ranks[1] > 0
-- a set's TTL is refreshed once per script, not once per member
for a, _ in pairs(grown) do
  redis.call('EXPIRE', KEYS[a], meta.aud_ttl)
end
if ranked then
  for j = 1, 3 do redis.call('EXPIRE', KEYS[4 + j], meta.aud_ttl) end
end
for k, n in pairs(meta.stats) do
  redis.call('HINCRBY', KEYS[8], k, n)
end
return {}
