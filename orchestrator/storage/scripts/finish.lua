-- The owner of an attempt records its outcome, acknowledging and deleting the work item in the
-- same step. Fenced: refused unless the task is still running under this very attempt.
--   completed        keeps the full result (staged by the caller); the task is done
--   failed           the task is done; it goes to the dead-letter stream
--   retry_scheduled  the task waits `delay` ms in the delayed set, then gets a new work item;
--                    the attempt is charged to the task (`failures`, which the worker checks
--                    against the maximum before it chooses between a retry and a failure)
-- The full result is not an argument: the caller SETs it under the staged key in the same
-- round trip (Lua would copy it), and it is renamed to the result key here, or dropped.
-- KEYS: control, events, work, result, delayed, dead letters, staged result
-- ARGV: task_id, attempt, group, work message id, outcome, data, version,
--       '1' if a result was staged, retry delay ms, dead-letter reason, attempt history json,
--       then for a chunk of a job (else nothing) what it tells its job (lib.lua, job_args).
-- Idempotent: re-sending the outcome already stored for this attempt returns 'ok'.
local ctl, events, work, result, delayed, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local staged, has_result = KEYS[7], ARGV[8] == '1'
local task_id, outcome, msg = ARGV[1], ARGV[5], ARGV[4]
local after = outcome
if outcome == 'retry_scheduled' then after = 'queued' end
local status, attempt, seq, parent, checkpointed = unpack(redis.call('HMGET', ctl, 'status', 'attempt', 'seq',
  'parent', 'checkpointed'))
local job = parent and job_args(12, task_id, outcome, ARGV[3])
if status == after and attempt == ARGV[2] then
  if has_result then redis.call('DEL', staged) end
  return {'ok'}
end
if status ~= 'running' or attempt ~= ARGV[2] then
  if has_result then redis.call('DEL', staged) end
  return {'fenced', status or 'missing', attempt or '0'}
end
-- Checked before any write: a script's writes are not undone by a later error.
if parent and not job then
  return redis.error_reply('finish.lua: ' .. task_id .. ' is a chunk of ' .. parent .. ', and its job arguments are missing')
end
-- The first write, and the check that the staged result is there (RENAME refuses a missing key;
-- any other refusal, a read-only replica say, is passed on as it is, for the caller to judge).
if outcome == 'completed' and has_result then
  local renamed = redis.pcall('RENAME', staged, result)
  if renamed.err then
    if string.find(tostring(renamed.err), 'no such key', 1, true) then
      return redis.error_reply('finish.lua: the staged result ' .. staged .. ' is missing')
    end
    return renamed
  end
  redis.call('PERSIST', result)
end
if outcome == 'failed' then
  fail_for_good(ctl, events, dead, task_id, ARGV[7], attempt, ARGV[6], ARGV[10], ARGV[11])
  redis.call('HDEL', ctl, 'msg')
else
  seq = tonumber(seq or 0) + 1
  local id = log_event(events, task_id, outcome, ARGV[7], attempt, ARGV[6], seq)
  redis.call('HSET', ctl, 'status', after, 'seq', seq, event_field(seq), id)
  if outcome == 'completed' then
    redis.call('HDEL', ctl, 'owner', 'token', 'msg', 'spec')
    -- Only a task that saved a checkpoint has one to delete (checkpoint.lua marks it).
    if checkpointed then forget_checkpoint(ctl) end
  else
    redis.call('HDEL', ctl, 'owner', 'token', 'msg')
  end
end
if outcome == 'retry_scheduled' then
  local now = redis.call('TIME')
  local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[9])
  redis.call('ZADD', delayed, due, task_id)
  redis.call('HINCRBY', ctl, 'failures', 1)
end
retire(work, ARGV[3], msg)
if job and outcome ~= 'retry_scheduled' then
  chunk_ended(ctl, parent, events, work, delayed, dead, job)
end
return {'ok'}
