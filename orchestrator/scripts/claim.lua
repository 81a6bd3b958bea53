-- A worker claims a task it read from the work stream: a new attempt begins.
-- KEYS: control, log, events, work, dead letters
-- ARGV: task_id, worker, claim token, data, schema version, work message id, reclaim (1/0),
--       group, max attempts, failed-event data, failed schema version, attempt history json
-- Returns {'ok', attempt, spec, failures, alone (1/0)} or {'terminal'|'missing'|'busy'|'stale', status}.
-- The work item of a task that is gone, finished, or no longer behind it is retired.
-- Idempotent by claim token: a re-sent claim returns the attempt it already made.
--
-- Attempt accounting: a reclaim takes over an attempt that lost its worker. That loss is charged
-- to the task (`losses`) only if the lost attempt ran alone on its worker (`alone` names that
-- attempt): a worker that died with several tasks in hand says nothing about any one of them.
-- Every reclaimed attempt runs alone (the worker starts it only when it holds nothing else), so
-- the next loss, if any, is the task's own. `max attempts` charged losses fail the task.
local ctl, log, events, work, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local task_id, worker, token, msg = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local reclaim = ARGV[7] == '1'
local status = redis.call('HGET', ctl, 'status')
if not status then
  retire(work, ARGV[8], msg)
  return {'missing', ''}
end
if redis.call('HGET', ctl, 'token') == token then
  local current, spec, failures, alone = unpack(redis.call('HMGET', ctl, 'attempt', 'spec', 'failures', 'alone'))
  return {'ok', current, spec, failures or '0', alone == current and '1' or '0'}
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
if status == 'running' and not reclaim then return {'busy', status} end
local attempt = tonumber(redis.call('HGET', ctl, 'attempt'))
local losses = tonumber(redis.call('HGET', ctl, 'losses') or 0)
local charged = status == 'running' and redis.call('HGET', ctl, 'alone') == tostring(attempt)
if charged then losses = losses + 1 end
if charged and losses >= tonumber(ARGV[9]) then
  -- Its worker died under it every time it ran alone: a task that kills its workers.
  redis.call('HSET', ctl, 'losses', losses)
  fail_for_good(ctl, log, events, dead, task_id, ARGV[11], attempt, ARGV[10], 'worker_lost', ARGV[12])
  retire(work, ARGV[8], msg)
  redis.call('HDEL', ctl, 'msg')
  return {'terminal', 'failed'}
end
attempt = redis.call('HINCRBY', ctl, 'attempt', 1)
redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', token, 'losses', losses)
if reclaim then redis.call('HSET', ctl, 'alone', attempt) end
append(ctl, log, events, task_id, 'started', ARGV[5], attempt, ARGV[4])
local spec, failures = unpack(redis.call('HMGET', ctl, 'spec', 'failures'))
return {'ok', tostring(attempt), spec, failures or '0', reclaim and '1' or '0'}
