-- Make a rebuilt projection the live one, but only if it has folded the whole log: the switch
-- happens between two appends, never in the middle of a catch-up.
-- KEYS: live-projection pointer, the new projection's position, events
-- ARGV: the new projection's name
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local tip = ''
if #last > 0 then tip = last[1][1] end
local position = redis.call('GET', KEYS[2]) or ''
if position ~= tip then return {'behind', tip} end
redis.call('SET', KEYS[1], ARGV[1])
return {'ok'}
