-- The owner of an attempt saves the run's state, so that an attempt taking the task over resumes
-- from it. Fenced: refused unless the task is still running under this very attempt (a worker
-- that lost its claim must not overwrite the state of the attempt that took over).
-- KEYS: control, checkpoint
-- ARGV: attempt, state (JSON), ttl ms
local status, attempt, checkpointed = unpack(redis.call('HMGET', KEYS[1], 'status', 'attempt', 'checkpointed'))
if status ~= 'running' or attempt ~= ARGV[1] then
  return {'fenced', status or 'missing', attempt or '0'}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
-- Marked, so that the task's finish deletes the state only when there is one (finish.lua).
if not checkpointed then redis.call('HSET', KEYS[1], 'checkpointed', 1) end
return {'ok'}
