-- Cancel a queued or running task: append `cancelled` and withdraw its work item, so no worker
-- starts it and the running attempt's next fenced write is refused.
-- A job's cancel also cancels every chunk of it that has not ended; a chunk alone is not
-- cancelled (its job is: {'chunk', job id}).
-- KEYS: control, events, work, delayed, the job's chunk list (Keys.job_chunks)
-- ARGV: task_id, data, version, group
local ctl, events, work, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local status, parent, attempt, msg, job = unpack(redis.call('HMGET', ctl, 'status', 'parent', 'attempt', 'msg',
  'job'))
if not status then return {'missing'} end
if parent then return {'chunk', parent} end
if status == 'cancelled' then return {'already'} end
if is_terminal(status) then return {'conflict', status} end
local id = append(ctl, events, ARGV[1], 'cancelled', ARGV[3], attempt,
  with_field(ARGV[2], 'previous_status', status), 'status', 'cancelled')
retire(work, ARGV[4], msg)
redis.call('HDEL', ctl, 'owner', 'token', 'spec', 'msg')
forget_checkpoint(ctl)
redis.call('ZREM', delayed, ARGV[1])
if job then
  cancel_chunks(string.sub(ctl, 1, #ctl - #ARGV[1]), KEYS[5], events, work, ARGV[4], delayed, ARGV[2], ARGV[3])
end
return {'ok', id}
