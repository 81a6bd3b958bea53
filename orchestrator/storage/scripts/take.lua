-- A worker reads up to COUNT new work items and claims every one it can start: the read and
-- the claims in one round trip. Each item is judged as claim.lua judges a fresh (not reclaimed)
-- one: a task that is gone, finished or no longer behind this item is retired; a running one
-- is left alone.
-- Each task's control hash cannot be a KEY (the task ids come from this script's own read):
-- it is named here from `Keys.task_prefix` and the id, as `Keys.control` names it. It carries
-- the same hash tag as the work stream, so it lives in its slot.
-- KEYS: work, events
-- ARGV: group, worker, count, control key prefix, started-event data, started schema version,
--       claim token prefix
-- Returns one entry per item read: {msg, task_id, 'ok', attempt, spec, failures, isolated} or
-- {msg, task_id, 'skipped'|'busy', status}.
local work, events = KEYS[1], KEYS[2]
local group, worker, ctl_prefix = ARGV[1], ARGV[2], ARGV[4]
local read = redis.call('XREADGROUP', 'GROUP', group, worker, 'COUNT', ARGV[3], 'STREAMS', work, '>')
local out = {}
if not read then return out end
for _, entry in ipairs(read[1][2]) do
  local msg, task_id = entry[1], entry[2][2]
  local ctl = ctl_prefix .. task_id
  -- Everything the claim needs, in one read; the claim's writes in one HSET.
  local status, current_msg, attempt, seq, spec, failures, isolate = unpack(redis.call(
    'HMGET', ctl, 'status', 'msg', 'attempt', 'seq', 'spec', 'failures', 'isolate'))
  if not status or is_terminal(status) or current_msg ~= msg then
    retire(work, group, msg)
    out[#out + 1] = {msg, task_id, 'skipped', status or 'missing'}
  elseif status == 'running' then
    out[#out + 1] = {msg, task_id, 'busy', status}
  else
    attempt = tonumber(attempt or 0) + 1
    seq = tonumber(seq or 0) + 1
    local data = ARGV[5]
    if isolate == '1' then data = with_true(data, 'isolated') end
    local id = log_event(events, task_id, 'started', ARGV[6], attempt, data, seq)
    redis.call('HSET', ctl, 'status', 'running', 'owner', worker, 'token', ARGV[7] .. msg,
      'attempt', attempt, 'seq', seq, event_field(seq), id)
    out[#out + 1] = {msg, task_id, 'ok', tostring(attempt), spec, failures or '0', isolate or '0'}
  end
end
return out
