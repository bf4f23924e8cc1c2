-- fence: first step of a merge across state shards. Points the anonymous subject at its user
-- (the alias) if its state is still the version the merge read, so no other writer can apply
-- events to it any more (write.lua refuses an anonymous subject that has an alias); the user's
-- shard is written next, then the anonymous state is deleted (write.lua, del).
--
-- KEYS[1] state   KEYS[2] alias   (of the anonymous subject)   KEYS[3] privacy:erased (its shard)
-- (built by stream/storage/keys.py)
-- ARGV[1] expected state version   ARGV[2] its erased token   ARGV[3] the user   ARGV[4] alias TTL (s)
-- Returns 1 when the alias is set (or already points at the user), 0 on a conflict.
local cur = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
if cur ~= tonumber(ARGV[1]) or redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then return 0 end
local linked = redis.call('GET', KEYS[2])
if linked and linked ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return 1
