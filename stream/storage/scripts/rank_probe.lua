-- rank_probe: the order-statistic probes of one state shard's sorted sets in one call
-- (stream/storage/quantiles.py; a round of an RFM refresh asks every shard for a few of them:
-- one call per shard instead of one command per probe).
--
-- KEYS[1], KEYS[2], ... the shard's sorted sets the probes name   (built by stream/storage/keys.py)
-- ARGV[1], ARGV[2], ...: quadruples (kind, key number, a, b):
--   'z': the scores at positions a..b of the set (ZRANGE a b WITHSCORES, scores only)
--   'c': {members scoring below a, members scoring at most a} (b unused)
-- Returns {the ZCARD of each key, in KEYS order; then one reply per quadruple, in order}.
local cards = {}
for k = 1, #KEYS do
  cards[k] = redis.call('ZCARD', KEYS[k])
end
local out = {cards}
for i = 1, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i + 1])]
  if ARGV[i] == 'z' then
    local flat = redis.call('ZRANGE', key, ARGV[i + 2], ARGV[i + 3], 'WITHSCORES')
    local scores = {}
    for j = 2, #flat, 2 do
      scores[#scores + 1] = flat[j]
    end
    out[#out + 1] = scores
  else
    out[#out + 1] = {
      redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[i + 2]),
      redis.call('ZCOUNT', key, '-inf', ARGV[i + 2]),
    }
  end
end
return out
