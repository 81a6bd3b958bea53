-- A user sends a failed task back to the queue: a new attempt with a fresh budget (no attempt
-- charged to it, no lost worker counted). A task once isolated stays isolated.
-- KEYS: control, log, events, work
-- ARGV: task_id, data, version
local ctl, log, events, work = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local status = redis.call('HGET', ctl, 'status')
if not status then return {'missing'} end
if status ~= 'failed' then return {'conflict', status} end
local id = append(ctl, log, events, ARGV[1], 'requeued', ARGV[3], redis.call('HGET', ctl, 'attempt'), ARGV[2])
local msg = redis.call('XADD', work, '*', 'task_id', ARGV[1])
redis.call('HSET', ctl, 'status', 'queued', 'msg', msg, 'failures', 0, 'losses', 0)
return {'ok', id}
