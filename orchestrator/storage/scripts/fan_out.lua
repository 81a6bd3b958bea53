-- The worker that claimed a job submits its chunks and hands the job over to them, in one step
-- (streams.md, "Jobs"): for each chunk, a control hash (naming its job, its place and its range),
-- its `submitted` event and a work item; the job's aggregate (Keys.job) and chunk list; then the
-- job's `fanned_out` event. The job's work item is retired and nobody holds its lease: it stays
-- running until its last chunk ends, and that chunk's finish appends its outcome.
-- Fenced: refused unless the job is still running under this very attempt. Idempotent: once
-- fanned out, a re-sent call changes nothing.
-- KEYS: control, events, work, job, chunk list
-- ARGV: task_id, attempt, group, work message id, fanned_out data, fanned_out version,
--       submitted version, chunks n, failures allowed, combinations, then n times: chunk id,
--       its `submitted` data, its spec JSON, its range as JSON ({symbol, start, stop})
local ctl, events, work, job, chunks = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local task_id = ARGV[1]
local status, attempt, seq, held = unpack(redis.call('HMGET', ctl, 'status', 'attempt', 'seq', 'job'))
if held and attempt == ARGV[2] then return {'ok'} end
if status ~= 'running' or attempt ~= ARGV[2] then
  return {'fenced', status or 'missing', attempt or '0'}
end
local task_prefix = string.sub(ctl, 1, #ctl - #task_id)
local n = tonumber(ARGV[8])
for k = 0, n - 1 do
  local at = 11 + 4 * k
  local chunk = ARGV[at]
  local cctl = task_prefix .. chunk
  local id = log_event(events, chunk, 'submitted', ARGV[7], 0, ARGV[at + 1], 1)
  local msg = redis.call('XADD', work, '*', 'task_id', chunk)
  redis.call('HSET', cctl, 'status', 'queued', 'attempt', 0, 'msg', msg, 'spec', ARGV[at + 2], 'seq', 1,
    event_field(1), id, 'parent', task_id, 'index', k, 'span', ARGV[at + 3])
  redis.call('RPUSH', chunks, chunk)
end
redis.call('HSET', job, 'total', n, 'done', 0, 'failed', 0, 'allowed', ARGV[9], 'combinations', ARGV[10],
  'percent', 0, 'missing', '')
seq = tonumber(seq) + 1
local id = log_event(events, task_id, 'fanned_out', ARGV[6], attempt, ARGV[5], seq)
redis.call('HSET', ctl, 'seq', seq, event_field(seq), id, 'job', 1)
redis.call('HDEL', ctl, 'owner', 'token', 'msg')
retire(work, ARGV[3], ARGV[4])
return {'ok'}
