-- A worker claims a task it read from the work stream: a new attempt begins.
-- KEYS: control, log, events, work, dead letters, delayed
-- ARGV: task_id, worker, claim token, data, schema version, work message id, reclaim (1/0),
--       group, max lost workers, failed-event data, failed schema version, attempt history json,
--       then what a failed chunk tells its job (lib.lua, chunk_ended): the job's `failed` data,
--       its other chunks' `cancelled` data, and the versions of completed, job_progress and
--       cancelled.
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
local ctl, log, events, work, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local task_id, worker, token, msg = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
-- Everything the claim needs, in one read; the claim's writes in one HSET.
local status, held_by, attempt, current_msg, losses, spec, failures, isolate, seq = unpack(redis.call(
  'HMGET', ctl, 'status', 'token', 'attempt', 'msg', 'losses', 'spec', 'failures', 'isolate', 'seq'))
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
if lost and losses + 1 >= tonumber(ARGV[9]) then
  -- It lost its worker that often, even running in a process of its own: give up on it.
  redis.call('HSET', ctl, 'losses', losses + 1)
  fail_for_good(ctl, log, events, dead, task_id, ARGV[11], attempt, ARGV[10], 'worker_lost', ARGV[12])
  retire(work, ARGV[8], msg)
  redis.call('HDEL', ctl, 'msg')
  chunk_ended(ctl, events, work, KEYS[6], dead, {task_id = task_id, outcome = 'failed', failed_data = ARGV[13],
    cancelled_data = ARGV[14], group = ARGV[8], failed_v = ARGV[11], completed_v = ARGV[15],
    progress_v = ARGV[16], cancelled_v = ARGV[17]})
  return {'terminal', 'failed'}
end
attempt = attempt + 1
seq = tonumber(seq or 0) + 1
if lost then
  isolate = '1'
  redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', token, 'attempt', attempt, 'seq', seq,
    'losses', losses + 1, 'isolate', '1')
else
  redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', token, 'attempt', attempt, 'seq', seq)
end
local data = ARGV[4]
if isolate == '1' then data = with_true(data, 'isolated') end
append_at(log, events, task_id, 'started', ARGV[5], attempt, data, seq)
return {'ok', tostring(attempt), spec, failures or '0', isolate or '0'}
