-- A worker shutting down gives back a task it could not finish in its grace period: the task is
-- queued again with a fresh work item, so another worker takes it at once (not after a lease).
-- KEYS: control, events, work
-- ARGV: task_id, attempt, group, work message id, data, version
local ctl, events, work = KEYS[1], KEYS[2], KEYS[3]
local status, attempt = unpack(redis.call('HMGET', ctl, 'status', 'attempt'))
if status ~= 'running' or attempt ~= ARGV[2] then
  return {'fenced', status or 'missing', attempt or '0'}
end
append(ctl, events, ARGV[1], 'released', ARGV[6], attempt, ARGV[5])
retire(work, ARGV[3], ARGV[4])
local msg = redis.call('XADD', work, '*', 'task_id', ARGV[1])
redis.call('HSET', ctl, 'status', 'queued', 'msg', msg)
redis.call('HDEL', ctl, 'owner', 'token')
return {'ok'}
