-- Read only: the fields and values of every hash in KEYS, as one array of flat arrays (an empty
-- one for a key that is gone). `replay --verify` snapshots a projection with it, a few hundred
-- keys per call: one reply parsed in C, where one pipelined HGETALL per key cost ~10 µs of
-- redis-py's Python per key.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGETALL', key)
end
return out
