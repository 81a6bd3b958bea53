-- The owner of an attempt renews its lease and, when due, records progress. Fenced: refused
-- unless the task is still running under this very attempt.
-- KEYS: control, events, work
-- ARGV: task_id, attempt, group, worker, work message id, emit progress (1/0), data, version
local ctl, events, work = KEYS[1], KEYS[2], KEYS[3]
local status, attempt = unpack(redis.call('HMGET', ctl, 'status', 'attempt'))
if status ~= 'running' or attempt ~= ARGV[2] then
  return {'fenced', status or 'missing', attempt or '0'}
end
-- Reset the pending entry's idle time: XAUTOCLAIM takes only entries idle past the lease.
redis.call('XCLAIM', work, ARGV[3], ARGV[4], 0, ARGV[5], 'JUSTID')
if ARGV[6] == '1' then
  append(ctl, events, ARGV[1], 'progress', ARGV[8], attempt, ARGV[7])
end
return {'ok'}
