-- The projector stores the states a batch of events produced together with its new position,
-- but only if the position is still the one the batch was folded from (another projector
-- may have moved it: then nothing is written and the caller re-reads).
-- The live projector also checks that its projection is still the live one (a rebuild may have
-- switched the pointer to a new version): then nothing is written and it follows the pointer.
-- KEYS: position, live-projection pointer, then the projection keys the ops refer to by index
-- ARGV: expected position ('' for none), new position, this projection's name ('' when it is
--       not the live projector), the default live name, then ops: name, key index, n, n args
local pos = redis.call('GET', KEYS[1]) or ''
if pos ~= ARGV[1] then return {'moved', pos} end
if ARGV[3] ~= '' and (redis.call('GET', KEYS[2]) or ARGV[4]) ~= ARGV[3] then return {'switched'} end
local i = 5
while i <= #ARGV do
  local op, key, n = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  if op == 'HSET' then
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + n))
  elseif op == 'ZADD' then
    redis.call('ZADD', key, 0, ARGV[i + 3])
  elseif op == 'ZREM' then
    redis.call('ZREM', key, ARGV[i + 3])
  else
    return redis.error_reply('apply.lua: unknown op ' .. op)
  end
  i = i + 3 + n
end
redis.call('SET', KEYS[1], ARGV[2])
return {'ok'}
