-- Shared by every command script (prepended when loaded): append one event of a task.
-- A task's control hash keeps its event counter (`seq`) and its log index: event number `seq`
-- is the field `e:<seq>`, holding the event's stream id (keys.py, `event_field`). Kept in the
-- hash the scripts write anyway, the index costs no command of its own on the hot paths.
local function event_field(seq)
  return 'e:' .. seq
end

-- Append the event numbered `seq` and return its stream id. The caller sets the counter and
-- the index (`event_field(seq)` -> id) in the HSET it makes anyway (take, claim, finish, submit).
local function log_event(events, task_id, etype, v, attempt, data, seq)
  return redis.call('XADD', events, '*', 'type', etype, 'v', v, 'task_id', task_id,
    'seq', seq, 'attempt', attempt, 'data', data)
end

-- Append the task's next event, counted and indexed; `...`: more control fields to set in the
-- same HSET (field, value, ...).
local function append(ctl, events, task_id, etype, v, attempt, data, ...)
  local seq = redis.call('HINCRBY', ctl, 'seq', 1)
  local id = log_event(events, task_id, etype, v, attempt, data, seq)
  redis.call('HSET', ctl, event_field(seq), id, ...)
  return id
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

-- A task that ended needs its saved state no more (Keys.checkpoint names it so).
local function checkpoint_key(ctl)
  return ctl .. ':checkpoint'
end

local function forget_checkpoint(ctl)
  redis.call('DEL', checkpoint_key(ctl))
end

-- Fail the task for good and put it on the dead-letter stream, with why and how often it ran.
local function fail_for_good(ctl, events, dead, task_id, v, attempt, data, reason, history)
  local id = append(ctl, events, task_id, 'failed', v, attempt, data, 'status', 'failed')
  redis.call('HDEL', ctl, 'owner', 'token')
  forget_checkpoint(ctl)
  redis.call('XADD', dead, '*', 'task_id', task_id, 'attempt', attempt, 'failed_event', id,
    'reason', reason, 'history', history)
  return id
end

-- Acknowledge and delete a work item: it is done with, whatever became of its task. In one
-- command (XACKDEL) on a server that has it (Redis 8.2 and later), else in two.
local XACKDEL = (tonumber(redis.REDIS_VERSION_NUM) or 0) >= 0x080200
local function retire_all(work, group, msgs)
  if #msgs > 0 then
    if XACKDEL then
      redis.call('XACKDEL', work, group, 'IDS', #msgs, unpack(msgs))
    else
      redis.call('XACK', work, group, unpack(msgs))
      redis.call('XDEL', work, unpack(msgs))
    end
  end
end

local function retire(work, group, msg)
  if msg then retire_all(work, group, {msg}) end
end

-- Jobs (streams.md, "Jobs"). A job's keys and its chunks' are named from a task's control key,
-- as take.lua names a task's: `<partition prefix>:task:` then the id, then these suffixes
-- (keys.py: Keys.job, Keys.job_chunks). A job and its chunks share one hash tag, so every one
-- of them is in the slot of the script that names it.

-- What the worker tells a chunk's job (job_args.py, `job_args`), from ARGV[base] on, in this
-- order: the chunk's best score ('' for none), bankrupt ('1'/'0'), the job's summary should it
-- hold the job's best (JSON object), the job's `failed` data, the `cancelled` data of its other
-- chunks, and the versions of completed, failed, job_progress and cancelled. nil when the call
-- lacks them (a caller checks that before its first write).
local function job_args(base, task_id, outcome, group)
  if not ARGV[base + 8] then return nil end
  return {task_id = task_id, outcome = outcome, group = group, score = ARGV[base], bankrupt = ARGV[base + 1],
    best = ARGV[base + 2], failed_data = ARGV[base + 3], cancelled_data = ARGV[base + 4],
    completed_v = ARGV[base + 5], failed_v = ARGV[base + 6], progress_v = ARGV[base + 7], cancelled_v = ARGV[base + 8]}
end

-- Is the chunk ranked (bankrupt, score, index) better than the job's best so far (cb, cs, ci)?
-- As the engine ranks rows: bankrupt last, then no score, then the higher score, then the
-- earlier chunk (the grid's order). Scores are decimal strings of doubles ('' for none).
local function better(b, s, i, cb, cs, ci)
  if not ci then return true end
  if b ~= cb then return b == '0' end
  if (s == '') ~= (cs == '') then return s ~= '' end
  if s ~= '' and tonumber(s) ~= tonumber(cs) then return tonumber(s) > tonumber(cs) end
  return tonumber(i) < tonumber(ci)
end

-- Cancel every chunk of a job that has not ended, as cancel.lua cancels a task. A job has up to
-- 2,000 chunks (MAX_CHUNKS, consumers/engine/jobs.py): each costs a read, its event and two writes
-- to its control hash; the work items, the delayed set and the checkpoints of all of them are
-- cleared in one command each (`unpack` passes up to 8,000 values).
local function cancel_chunks(task_prefix, chunks, events, work, group, delayed, data, v)
  local msgs, ids, saved = {}, {}, {}
  for _, id in ipairs(redis.call('LRANGE', chunks, 0, -1)) do
    local cctl = task_prefix .. id
    local status, msg, attempt, seq, checkpointed = unpack(redis.call('HMGET', cctl, 'status', 'msg', 'attempt',
      'seq', 'checkpointed'))
    if status and not is_terminal(status) then
      seq = tonumber(seq) + 1
      local eid = log_event(events, id, 'cancelled', v, attempt or 0, with_field(data, 'previous_status', status), seq)
      redis.call('HSET', cctl, 'status', 'cancelled', 'seq', seq, event_field(seq), eid)
      -- The spec stays: retrying a failed job runs its cancelled chunks again (requeue.lua).
      redis.call('HDEL', cctl, 'owner', 'token', 'msg')
      if msg then msgs[#msgs + 1] = msg end
      ids[#ids + 1] = id
      if checkpointed then saved[#saved + 1] = checkpoint_key(cctl) end
    end
  end
  retire_all(work, group, msgs)
  if #ids > 0 then redis.call('ZREM', delayed, unpack(ids)) end
  if #saved > 0 then redis.call('DEL', unpack(saved)) end
end

-- A chunk ended for good (`j.outcome` 'completed' or 'failed'): count it in its job, keep the
-- job's best, and append the job's outcome when this was its last chunk, or one failure more
-- than the job tolerates (then its other chunks are cancelled). Else a `job_progress` when the
-- job passed another whole percent. Nothing when the task is no chunk or its job has ended.
-- `parent`: the job's id (the chunk's control hash names it). j: task_id, outcome, group, and
-- what `job_args` reads.
local function chunk_ended(ctl, parent, events, work, delayed, dead, j)
  local index, span = unpack(redis.call('HMGET', ctl, 'index', 'span'))
  local task_prefix = string.sub(ctl, 1, #ctl - #j.task_id)
  local pctl = task_prefix .. parent
  local job = pctl .. ':job'
  local pstatus, pattempt = unpack(redis.call('HMGET', pctl, 'status', 'attempt'))
  if pstatus ~= 'running' then return end
  -- The aggregate, read once: every field the rest of this function needs.
  local total, done, failed, allowed, shown, missing, cb, cs, ci, best, combinations = unpack(redis.call('HMGET',
    job, 'total', 'done', 'failed', 'allowed', 'percent', 'missing', 'best_bankrupt', 'best_score', 'best_index',
    'best', 'combinations'))
  total, done, failed = tonumber(total), tonumber(done), tonumber(failed)
  if j.outcome == 'completed' then
    done = done + 1
    if better(j.bankrupt, j.score, index, cb, cs, ci) then
      ci, best = index, j.best
      redis.call('HSET', job, 'done', done, 'best_bankrupt', j.bankrupt, 'best_score', j.score,
        'best_index', index, 'best', j.best)
    else
      redis.call('HSET', job, 'done', done)
    end
  else
    failed = failed + 1
    if missing ~= '' then missing = missing .. ',' end
    missing = missing .. span
    redis.call('HSET', job, 'failed', failed, 'missing', missing)
  end
  if j.outcome == 'failed' and failed > tonumber(allowed) then
    fail_for_good(pctl, events, dead, parent, j.failed_v, pattempt, j.failed_data, 'chunk_failed', '[]')
    cancel_chunks(task_prefix, pctl .. ':chunks', events, work, j.group, delayed, j.cancelled_data, j.cancelled_v)
    return
  end
  if done + failed == total then
    local result = '{"result":{"chunks":' .. total .. ',"completed":' .. done .. ',"failed":' .. failed ..
      ',"combinations":' .. combinations .. ',"missing":[' .. missing .. '],"best_chunk":' .. ci ..
      ',' .. string.sub(best, 2) .. '}'
    append(pctl, events, parent, 'completed', j.completed_v, pattempt, result, 'status', 'completed')
    redis.call('HDEL', pctl, 'owner', 'token', 'msg', 'spec')
    return
  end
  local percent = math.floor(100 * (done + failed) / total)
  if percent > tonumber(shown) then
    redis.call('HSET', job, 'percent', percent)
    local data = '{"progress":' .. string.format('%.17g', (done + failed) / total) .. ',"done":' .. done ..
      ',"failed":' .. failed .. ',"best":' .. (best or 'null') .. '}'
    append(pctl, events, parent, 'job_progress', j.progress_v, pattempt, data)
  end
end
