-- A projector's lease on one partition: who folds it. The value is the holder's name; the key
-- expires unless its holder renews it, so a projector that dies hands its partitions on.
-- KEYS: the partition's projector lease
-- ARGV: 'take' (a free lease, or renew one already held), 'renew' (only one already held) or
--       'release' (delete it if held), the projector's name, the lease's length in ms
-- Returns 1 when the caller holds the lease afterwards ('release': when it let it go), else 0.
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == 'release' then
  if holder == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if holder == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if ARGV[1] == 'take' and not holder then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
