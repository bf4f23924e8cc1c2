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
-- Each set is read once and written with variadic commands (each_chunk), not one per user.
--#include _chunks
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if #expired > 0 then
  local back = {}
  for _, u in ipairs(expired) do
    table.insert(back, 0)
    table.insert(back, u)
  end
  each_chunk(expired, 1000, function(...) redis.call('ZREM', KEYS[2], ...) end)
  each_chunk(back, 1000, function(...) redis.call('ZADD', KEYS[1], ...) end)
end
-- the first `limit + 1` members by score: the due ones among them are claimed, the first member
-- not claimed is the earliest left
local limit = tonumber(ARGV[2])
local first = redis.call('ZRANGE', KEYS[1], 0, limit, 'WITHSCORES')
local upto = tonumber(ARGV[1])
local due, claimed, leased = {}, {}, {}
local head = ''
for i = 1, #first, 2 do
  if #claimed < limit and tonumber(first[i + 1]) <= upto then
    table.insert(due, first[i])
    table.insert(due, first[i + 1])
    table.insert(claimed, first[i])
    table.insert(leased, ARGV[4])
    table.insert(leased, first[i])
  else
    head = first[i + 1]
    break
  end
end
if #claimed > 0 then
  each_chunk(claimed, 1000, function(...) redis.call('ZREM', KEYS[1], ...) end)
  each_chunk(leased, 1000, function(...) redis.call('ZADD', KEYS[2], ...) end)
end
return {due, head}
