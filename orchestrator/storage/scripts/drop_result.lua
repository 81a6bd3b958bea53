-- Retention deleted (or is about to delete) a completed task's full result from the results
-- store: record it as a `result_deleted` event, once. Written before the objects are deleted,
-- so a reader never finds a result the log still calls present; objects a crash left behind
-- are no longer named by any live result, and the orphan collector deletes them.
-- A task whose control hash (with its log index) retention compacted gets them back from the live
-- projection (which holds every event of such a task: it was compacted only once folded).
-- KEYS: control, events, the task's hash in the live projection
-- ARGV: task_id, data, version, object key
-- Replies: {'ok', id} | {'done'} (recorded already) | {'missing'} | {'conflict', status}
local ctl, events, projected = KEYS[1], KEYS[2], KEYS[3]
local status = redis.call('HGET', ctl, 'status')
if not status then
  local pstatus = redis.call('HGET', projected, 'status')
  if not pstatus then return {'missing'} end
  if pstatus ~= '"completed"' then return {'conflict', pstatus} end
  if redis.call('HEXISTS', projected, 'result_deleted_at') == 1 then return {'done'} end
  redis.call('HSET', ctl, 'status', 'completed', 'seq', tonumber(redis.call('HGET', projected, 'seq')),
    'attempt', tonumber(redis.call('HGET', projected, 'attempt')))
  status = 'completed'
end
if status ~= 'completed' then return {'conflict', status} end
if redis.call('HGET', ctl, 'result_deleted') == ARGV[4] then return {'done'} end
local id = append(ctl, events, ARGV[1], 'result_deleted', ARGV[3], redis.call('HGET', ctl, 'attempt') or '0', ARGV[2])
redis.call('HSET', ctl, 'result_deleted', ARGV[4])
return {'ok', id}
