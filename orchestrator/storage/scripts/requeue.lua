-- A user sends a failed task back to the queue: a new attempt with a fresh budget (no attempt
-- charged to it, no lost worker counted). A task once isolated stays isolated.
-- A failed job runs again at once, as a job: every chunk of it that did not complete is sent
-- back to the queue the same way, and the job forgets its failures (its completed chunks and
-- best stay). A chunk alone is not retried (its job is: {'chunk', job id}).
-- KEYS: control, events, work, the job's chunk list (Keys.job_chunks), the job (Keys.job)
-- ARGV: task_id, data, version
local ctl, events, work = KEYS[1], KEYS[2], KEYS[3]
local status, parent, job = unpack(redis.call('HMGET', ctl, 'status', 'parent', 'job'))
if not status then return {'missing'} end
if parent then return {'chunk', parent} end
if status ~= 'failed' then return {'conflict', status} end
local id = append(ctl, events, ARGV[1], 'requeued', ARGV[3], redis.call('HGET', ctl, 'attempt'), ARGV[2])
if not job then
  local msg = redis.call('XADD', work, '*', 'task_id', ARGV[1])
  redis.call('HSET', ctl, 'status', 'queued', 'msg', msg, 'failures', 0, 'losses', 0)
  return {'ok', id}
end
redis.call('HSET', ctl, 'status', 'running')
-- Its failures forgotten, and progress counted again from its completed chunks.
local total, done = unpack(redis.call('HMGET', KEYS[5], 'total', 'done'))
redis.call('HSET', KEYS[5], 'failed', 0, 'missing', '', 'percent', math.floor(100 * tonumber(done) / tonumber(total)))
local task_prefix = string.sub(ctl, 1, #ctl - #ARGV[1])
for _, chunk in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  local cctl = task_prefix .. chunk
  local cstatus, attempt = unpack(redis.call('HMGET', cctl, 'status', 'attempt'))
  if cstatus == 'failed' or cstatus == 'cancelled' then
    append(cctl, events, chunk, 'requeued', ARGV[3], attempt or 0, ARGV[2])
    local msg = redis.call('XADD', work, '*', 'task_id', chunk)
    redis.call('HSET', cctl, 'status', 'queued', 'msg', msg, 'failures', 0, 'losses', 0)
  end
end
return {'ok', id}
