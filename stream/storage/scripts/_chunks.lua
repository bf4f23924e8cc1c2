-- each_chunk: call fn with the items of list, at most step at a time (unpack's arguments are
-- bounded by Lua's C stack), so a set is written with a few variadic commands, not one per item.
-- Scripts take it in with an include line (script_source, stream/storage/client.py).
local function each_chunk(list, step, fn)
  for i = 1, #list, step do
    fn(unpack(list, i, math.min(i + step - 1, #list)))
  end
end
