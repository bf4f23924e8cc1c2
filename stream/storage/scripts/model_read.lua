-- model_read: a shard's model items after a position, as one flat reply
-- (stream/storage/store.py read_model_items; the trainer reads every shard each round).
--
-- KEYS[1]: the shard's model-example stream                     (built by stream/storage/keys.py)
-- ARGV[1]: read after this entry id ('-': from the start); ARGV[2]: at most this many entries
-- Returns {id, item, id, item, ...} in stream order: the 'i' field of each entry. XRANGE's own
-- reply nests every entry's field list, which the client then turns into a dict per entry.
local start = ARGV[1] == '-' and '-' or '(' .. ARGV[1]
local out = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'i' then
      out[#out + 1] = entry[1]
      out[#out + 1] = fields[j + 1]
    end
  end
end
return out
