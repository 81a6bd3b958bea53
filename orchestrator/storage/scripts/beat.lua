-- A long-running process says it is alive: its name scored by Redis's clock (ms), so readers on
-- any machine compare ages on one clock. Members silent for longer than ARGV[2] ms are dropped.
-- KEYS: the heartbeats sorted set
-- ARGV: name, keep ms
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
