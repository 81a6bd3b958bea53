-- A worker claims a task it read from the work stream: a new attempt begins.
-- KEYS: control, log, events, work, dead letters
-- ARGV: task_id, worker, claim token, data, schema version, work message id, reclaim (1/0),
--       group, max attempts, failed-event data, failed schema version, attempt history json
-- Returns {'ok', attempt, spec, retry budget start} or {'terminal'|'missing'|'busy'|'stale', status}.
-- The work item of a task that is gone, finished, or no longer behind it is retired.
-- Idempotent by claim token: a re-sent claim returns the attempt it already made.
local ctl, log, events, work, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local task_id, worker, token, msg = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local status = redis.call('HGET', ctl, 'status')
if not status then
  retire(work, ARGV[8], msg)
  return {'missing', ''}
end
if redis.call('HGET', ctl, 'token') == token then
  return {'ok', redis.call('HGET', ctl, 'attempt'), redis.call('HGET', ctl, 'spec'), redis.call('HGET', ctl, 'budget')}
end
if is_terminal(status) then
  retire(work, ARGV[8], msg)
  return {'terminal', status}
end
-- Only the task's current work item may start it (an item left behind by a release or retry
-- is stale).
if redis.call('HGET', ctl, 'msg') ~= msg then
  retire(work, ARGV[8], msg)
  return {'stale', status}
end
-- A running task is taken only through a reclaim (its lease expired).
if status == 'running' and ARGV[7] ~= '1' then return {'busy', status} end
local attempt = tonumber(redis.call('HGET', ctl, 'attempt'))
if status == 'running' and attempt - tonumber(redis.call('HGET', ctl, 'budget') or 0) >= tonumber(ARGV[9]) then
  -- It lost its worker on every attempt it was allowed: a poison task, not a transient crash.
  fail_for_good(ctl, log, events, dead, task_id, ARGV[11], attempt, ARGV[10], 'worker_lost', ARGV[12])
  retire(work, ARGV[8], msg)
  redis.call('HDEL', ctl, 'msg')
  return {'terminal', 'failed'}
end
attempt = redis.call('HINCRBY', ctl, 'attempt', 1)
redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', token)
append(ctl, log, events, task_id, 'started', ARGV[5], attempt, ARGV[4])
return {'ok', tostring(attempt), redis.call('HGET', ctl, 'spec'), redis.call('HGET', ctl, 'budget')}
