-- write: apply one batch atomically, after a compare-and-set on every user's state version.
--
-- Every key is built by stream/storage/keys.py and passed in KEYS; this script builds none.
-- KEYS[1]  due                 KEYS[2]  due:inflight        KEYS[3]  outbox
-- KEYS[4]  models:examples     KEYS[5]  rank:r              KEYS[6]  rank:f
-- KEYS[7]  rank:m              KEYS[8]  clock               KEYS[9]  clock:parts
-- KEYS[10] stats               KEYS[11] privacy:erased
-- KEYS[12 + 3*(i-1)], +1, +2   state, profile, alias of user i (the i-th entry of meta.users)
-- KEYS[n] for n after those    the batch's audience sets, referenced by index from meta.users
-- ARGV[1]      meta (JSON): users = [{u: user id, h: erased token, v: expected version,
--              a: anonymous, al: alias target or false, del: delete, p: flat profile fields,
--              aa / ar: KEYS indexes of audience sets to add to / remove from, due: due score,
--              ttl: seconds, rk: {r, f, m} rank scores or false, tr: {{topic, value}} triggers,
--              ln: model examples}], clock: event time or false, aud_ttl: seconds,
--              parts: flat {field, value} of partition progress to store (decided in Python:
--              stream/storage/store.py progress_updates), stats: {counter: increment}
-- ARGV[1 + i]  state blob of user i
-- Returns the user ids whose version moved (then nothing was written), else an empty list.
local GLOBAL_KEYS, PER_USER = 11, 3
local meta = cjson.decode(ARGV[1])
local conflicts = {}
for i, u in ipairs(meta.users) do
  local k = GLOBAL_KEYS + PER_USER * (i - 1)
  local cur = redis.call('HGET', KEYS[k + 1], 'ver')
  local curv = 0
  if cur then curv = tonumber(cur) end
  -- an erasure since the read counts as a change: the retry sees the user erased, writes nothing
  if curv ~= u.v or redis.call('SISMEMBER', KEYS[11], u.h) == 1 then
    table.insert(conflicts, u.u)
  elseif u.a and not u.del and redis.call('EXISTS', KEYS[k + 3]) == 1 then
    -- merged into a known user since the read: its events now belong there
    table.insert(conflicts, u.u)
  end
end
if #conflicts > 0 then return conflicts end
for i, u in ipairs(meta.users) do
  local k = GLOBAL_KEYS + PER_USER * (i - 1)
  local skey, pkey = KEYS[k + 1], KEYS[k + 2]
  redis.call('ZREM', KEYS[2], u.u)
  if u.del then
    redis.call('DEL', skey, pkey)
    redis.call('ZREM', KEYS[1], u.u)
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
    redis.call('ZADD', KEYS[1], u.due, u.u)
  end
  for _, a in ipairs(u.ar) do
    redis.call('SREM', KEYS[a], u.u)
  end
  for _, a in ipairs(u.aa) do
    redis.call('SADD', KEYS[a], u.u)
    redis.call('EXPIRE', KEYS[a], meta.aud_ttl)
  end
  for _, tr in ipairs(u.tr) do
    redis.call('XADD', KEYS[3], '*', 't', tr[1], 'k', u.u, 'v', tr[2])
  end
  for _, item in ipairs(u.ln) do
    redis.call('XADD', KEYS[4], '*', 'i', item)
  end
  for j = 1, 3 do
    local rkey = KEYS[4 + j]
    if type(u.rk) == 'table' then
      redis.call('ZADD', rkey, u.rk[j], u.u)
      redis.call('EXPIRE', rkey, meta.aud_ttl)
    else
      redis.call('ZREM', rkey, u.u)
    end
  end
end
if #meta.parts > 0 then
  redis.call('HSET', KEYS[9], unpack(meta.parts))
end
-- the clock is the largest event time any worker applied: it never moves backwards
if type(meta.clock) == 'number' then
  local cur = tonumber(redis.call('GET', KEYS[8]) or '0')
  if meta.clock > cur then redis.call('SET', KEYS[8], string.format('%.6f', meta.clock)) end
end
for k, n in pairs(meta.stats) do
  redis.call('HINCRBY', KEYS[10], k, n)
end
return {}
