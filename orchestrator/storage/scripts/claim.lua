-- A worker claims a task it read from the work stream: a new attempt begins.
-- KEYS: control, events, work, dead letters, delayed
-- ARGV: task_id, worker, claim token, data, schema version, work message id, reclaim (1/0),
--       group, max lost workers, failed-event data, failed schema version, attempt history json,
--       then what a chunk failed here tells its job (lib.lua, job_args).
-- Returns {'ok', attempt, spec, failures, isolated (1/0)} or
-- {'terminal'|'missing'|'busy'|'stale', status}.
-- The work item of a task that is gone, finished, or no longer behind it is retired.
-- Idempotent by claim token: a re-sent claim returns the attempt it already made.
--
-- Attempt accounting: a reclaim of a running task takes over an attempt that lost its worker.
-- The loss is not charged to the task's budget (the worker may have died of anything, with
-- other tasks in hand); instead the task is marked `isolate`, and from then on every attempt
-- runs in a process of its own, where a death is the task's own, seen by its worker, and
-- charged like an error (finish.lua). Losses are only counted, as a backstop: a task that
-- loses its worker `max lost workers` times is failed (`WorkerLost`).
local ctl, events, work, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local task_id, worker, token, msg = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
-- Everything the claim needs, in one read; the claim's writes in one HSET.
local status, held_by, attempt, current_msg, losses, spec, failures, isolate, seq, parent = unpack(redis.call(
  'HMGET', ctl, 'status', 'token', 'attempt', 'msg', 'losses', 'spec', 'failures', 'isolate', 'seq', 'parent'))
if not status then
  retire(work, ARGV[8], msg)
  return {'missing', ''}
end
if held_by == token then
  return {'ok', attempt, spec, failures or '0', isolate or '0'}
end
if is_terminal(status) then
  retire(work, ARGV[8], msg)
  return {'terminal', status}
end
-- Only the task's current work item may start it (an item left behind by a release or retry
-- is stale).
if current_msg ~= msg then
  retire(work, ARGV[8], msg)
  return {'stale', status}
end
-- A running task is taken only through a reclaim (its lease expired).
if status == 'running' and ARGV[7] ~= '1' then return {'busy', status} end
attempt = tonumber(attempt)
local lost = status == 'running'
losses = tonumber(losses or 0)
local job = parent and job_args(13, task_id, 'failed', ARGV[8])
if parent and not job then
  return redis.error_reply('claim.lua: ' .. task_id .. ' is a chunk of ' .. parent .. ', and its job arguments are missing')
end
if lost and losses + 1 >= tonumber(ARGV[9]) then
  -- It lost its worker that often, even running in a process of its own: give up on it.
  redis.call('HSET', ctl, 'losses', losses + 1)
  fail_for_good(ctl, events, dead, task_id, ARGV[11], attempt, ARGV[10], 'worker_lost', ARGV[12])
  retire(work, ARGV[8], msg)
  redis.call('HDEL', ctl, 'msg')
  if job then chunk_ended(ctl, parent, events, work, KEYS[5], dead, job) end
  return {'terminal', 'failed'}
end
attempt = attempt + 1
seq = tonumber(seq or 0) + 1
if lost then isolate = '1' end
local data = ARGV[4]
if isolate == '1' then data = with_true(data, 'isolated') end
local id = log_event(events, task_id, 'started', ARGV[5], attempt, data, seq)
if lost then
  redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', token, 'attempt', attempt, 'seq', seq,
    event_field(seq), id, 'losses', losses + 1, 'isolate', '1')
else
  redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', token, 'attempt', attempt, 'seq', seq,
    event_field(seq), id)
end
return {'ok', tostring(attempt), spec, failures or '0', isolate or '0'}
