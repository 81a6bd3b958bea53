-- Move a task whose retry delay has passed from the delayed set to the work stream.
-- KEYS: delayed, work, control
-- ARGV: task_id
-- Idempotent: a task no longer in the delayed set, or not queued, is left alone.
local delayed, work, ctl = KEYS[1], KEYS[2], KEYS[3]
local due = redis.call('ZSCORE', delayed, ARGV[1])
if not due then return {'gone'} end
local now = redis.call('TIME')
if tonumber(due) > tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then return {'not_due'} end
redis.call('ZREM', delayed, ARGV[1])
if redis.call('HGET', ctl, 'status') ~= 'queued' then return {'gone'} end
local msg = redis.call('XADD', work, '*', 'task_id', ARGV[1])
redis.call('HSET', ctl, 'msg', msg)
return {'ok', msg}
