-- Cancel a queued or running task: append `cancelled` and withdraw its work item, so no worker
-- starts it and the running attempt's next fenced write is refused.
-- KEYS: control, log, events, work, delayed
-- ARGV: task_id, data, version, group
local ctl, log, events, work, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local status = redis.call('HGET', ctl, 'status')
if not status then return {'missing'} end
if status == 'cancelled' then return {'already'} end
if is_terminal(status) then return {'conflict', status} end
local attempt = redis.call('HGET', ctl, 'attempt')
local id = append(ctl, log, events, ARGV[1], 'cancelled', ARGV[3], attempt,
  with_field(ARGV[2], 'previous_status', status))
redis.call('HSET', ctl, 'status', 'cancelled')
retire(work, ARGV[4], redis.call('HGET', ctl, 'msg'))
redis.call('HDEL', ctl, 'owner', 'token', 'spec', 'msg')
redis.call('ZREM', delayed, ARGV[1])
return {'ok', id}
