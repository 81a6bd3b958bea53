-- Shared by every command script (prepended when loaded): append one event of a task.
-- The task's seq counter lives in its control hash; the event id goes to the task's log index.
-- `append_at` appends the event numbered `seq` and leaves the counter to its caller, which sets
-- it in the HSET it makes anyway (one command fewer on the hot paths: take, claim, finish, submit).
local function append_at(log, events, task_id, etype, v, attempt, data, seq)
  local id = redis.call('XADD', events, '*', 'type', etype, 'v', v, 'task_id', task_id,
    'seq', seq, 'attempt', attempt, 'data', data)
  redis.call('RPUSH', log, id)
  return id
end

local function append(ctl, log, events, task_id, etype, v, attempt, data)
  return append_at(log, events, task_id, etype, v, attempt, data, redis.call('HINCRBY', ctl, 'seq', 1))
end

-- Add a field whose value is a known-safe string to a JSON object made by the caller.
local function with_field(json, key, value)
  local rest = string.sub(json, 2)
  if rest ~= '}' then rest = ',' .. rest end
  return '{"' .. key .. '":"' .. value .. '"' .. rest
end

-- Add `"key":true` to a JSON object made by the caller.
local function with_true(json, key)
  local rest = string.sub(json, 2)
  if rest ~= '}' then rest = ',' .. rest end
  return '{"' .. key .. '":true' .. rest
end

local function is_terminal(status)
  return status == 'completed' or status == 'failed' or status == 'cancelled'
end

-- Fail the task for good and put it on the dead-letter stream, with why and how often it ran.
local function fail_for_good(ctl, log, events, dead, task_id, v, attempt, data, reason, history)
  local id = append(ctl, log, events, task_id, 'failed', v, attempt, data)
  redis.call('HSET', ctl, 'status', 'failed')
  redis.call('HDEL', ctl, 'owner', 'token')
  redis.call('XADD', dead, '*', 'task_id', task_id, 'attempt', attempt, 'failed_event', id,
    'reason', reason, 'history', history)
  return id
end

-- Acknowledge and delete a work item: it is done with, whatever became of its task. In one
-- command (XACKDEL) on a server that has it (Redis 8.2 and later), else in two.
local XACKDEL = (tonumber(redis.REDIS_VERSION_NUM) or 0) >= 0x080200
local function retire(work, group, msg)
  if msg then
    if XACKDEL then
      redis.call('XACKDEL', work, group, 'IDS', 1, msg)
    else
      redis.call('XACK', work, group, msg)
      redis.call('XDEL', work, msg)
    end
  end
end
