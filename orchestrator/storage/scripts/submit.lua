-- Submit a task: append `submitted`, create its control hash, enqueue its work item.
-- KEYS: control, events, work, idempotency
-- ARGV: task_id, data, schema version, spec json, has idempotency key (1/0), body hash, ttl
-- Idempotent: re-sending the same call (a client retry) returns the task it created.
local ctl, events, work, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local task_id = ARGV[1]
if ARGV[5] == '1' then
  local seen = redis.call('GET', idem)
  if seen then
    local sep = string.find(seen, '|', 1, true)
    local seen_task = string.sub(seen, 1, sep - 1)
    if string.sub(seen, sep + 1) == ARGV[6] then return {'existing', seen_task} end
    return {'idempotency_conflict', seen_task}
  end
end
if redis.call('EXISTS', ctl) == 1 then return {'existing', task_id} end
local id = log_event(events, task_id, 'submitted', ARGV[3], 0, ARGV[2], 1)
local msg = redis.call('XADD', work, '*', 'task_id', task_id)
-- The spec is kept here while the task may still run, so a claim returns it in one round trip.
redis.call('HSET', ctl, 'status', 'queued', 'attempt', 0, 'msg', msg, 'spec', ARGV[4], 'seq', 1, event_field(1), id)
if ARGV[5] == '1' then
  redis.call('SET', idem, task_id .. '|' .. ARGV[6], 'EX', ARGV[7])
end
return {'ok', id}
