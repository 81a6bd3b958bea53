-- The projector stores the states a batch of events produced together with its new position,
-- but only if the position is still the one the batch was folded from (another projector
-- may have moved it: then nothing is written and the caller re-reads).
-- The live projector also checks that its projection is still the live one (a rebuild may have
-- switched the pointer to a new version): then nothing is written and it follows the pointer.
-- KEYS: position, live-projection pointer, then the projection keys the ops refer to by index
-- ARGV: expected position ('' for none), new position, this projection's name ('' when it is
--       not the live projector), the default live name, and the ops, packed into one string:
--       ops separated by \2, each `name \1 key index \1 payload`, the payload's items (fields
--       and values, or members) separated by \0. JSON never holds these bytes raw, and one
--       packed argument keeps a batch of thousands of writes cheap to build, send and parse.
local function split(packed, sep)
  local parts, i = {}, 1
  while true do
    local j = string.find(packed, sep, i, true)
    if not j then
      parts[#parts + 1] = string.sub(packed, i)
      return parts
    end
    parts[#parts + 1] = string.sub(packed, i, j - 1)
    i = j + 1
  end
end

local pos = redis.call('GET', KEYS[1]) or ''
if pos ~= ARGV[1] then return {'moved', pos} end
if ARGV[3] ~= '' and (redis.call('GET', KEYS[2]) or ARGV[4]) ~= ARGV[3] then return {'switched'} end
if ARGV[5] ~= '' then
  for _, packed in ipairs(split(ARGV[5], '\2')) do
    local op = split(packed, '\1')
    local name, key, items = op[1], KEYS[tonumber(op[2])], split(op[3], '\0')
    if name == 'HSET' then
      redis.call('HSET', key, unpack(items))
    elseif name == 'HDEL' then
      redis.call('HDEL', key, unpack(items))
    elseif name == 'ZADD' or name == 'ZREM' then
      -- Members in chunks: unpack() has a limit on how many values it can return.
      for start = 1, #items, 1000 do
        local chunk = {}
        for i = start, math.min(start + 999, #items) do
          if name == 'ZADD' then chunk[#chunk + 1] = 0 end
          chunk[#chunk + 1] = items[i]
        end
        redis.call(name, key, unpack(chunk))
      end
    else
      return redis.error_reply('apply.lua: unknown op ' .. name)
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return {'ok'}
