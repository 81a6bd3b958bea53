-- A worker claims a task it read from the work stream: a new attempt begins.
-- KEYS: control, log, events
-- ARGV: task_id, worker, claim token, data, schema version, work message id, reclaim (1/0)
-- Idempotent by claim token: a re-sent claim returns the attempt it already made.
local ctl, log, events = KEYS[1], KEYS[2], KEYS[3]
local task_id, worker, token = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', ctl, 'status')
if not status then return {'missing'} end
if redis.call('HGET', ctl, 'token') == token then
  return {'ok', redis.call('HGET', ctl, 'attempt')}
end
if is_terminal(status) then return {'terminal', status} end
-- A running task is taken only through a reclaim (its lease expired); a plain delivery of a
-- running task means another worker holds it.
if status == 'running' and ARGV[7] ~= '1' then return {'busy', status} end
local attempt = redis.call('HINCRBY', ctl, 'attempt', 1)
redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', token, 'msg', ARGV[6])
append(ctl, log, events, task_id, 'started', ARGV[5], attempt, ARGV[4])
return {'ok', tostring(attempt)}
