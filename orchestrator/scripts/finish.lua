-- The owner of an attempt records its outcome (completed or failed), stores the full result,
-- and acknowledges and deletes the work item, all at once. Fenced like heartbeat.lua.
-- KEYS: control, log, events, work, result
-- ARGV: task_id, attempt, group, work message id, outcome type, data, version, result json
-- Idempotent: re-sending the same outcome for the same attempt returns 'ok'.
local ctl, log, events, work, result = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local outcome = ARGV[5]
local status = redis.call('HGET', ctl, 'status')
local attempt = redis.call('HGET', ctl, 'attempt')
if status == outcome and attempt == ARGV[2] then return {'ok'} end
if status ~= 'running' or attempt ~= ARGV[2] then
  return {'fenced', status or 'missing', attempt or '0'}
end
append(ctl, log, events, ARGV[1], outcome, ARGV[7], attempt, ARGV[6])
redis.call('HSET', ctl, 'status', outcome)
redis.call('HDEL', ctl, 'owner', 'token')
if ARGV[8] ~= '' then redis.call('SET', result, ARGV[8]) end
redis.call('XACK', work, ARGV[3], ARGV[4])
redis.call('XDEL', work, ARGV[4])
return {'ok'}
