"""The Lua scripts that change speech jobs in Redis, each one atomic (Redis runs a script alone): a job
and its quota check, idempotency key and queue messages are created together or not at all; a finished
segment is recorded once (the first write wins) and the job's encode is queued exactly once; a job
finishes once (a cancel and a success cannot both win).

Every script takes the key prefix as ARGV[1] and builds its keys from it, so they need one Redis (a
primary, with replicas or Sentinel if wanted), not Redis Cluster.
"""

from __future__ import annotations

_PRELUDE = """
local p = ARGV[1]
local function k(...) return p .. ':' .. table.concat({...}, ':') end
local STREAM = k('jobs', 'stream')
local function unfinished(status) return status == 'queued' or status == 'running' end
local function check_quota(scope, adding, max_total, max_key)
  local c = redis.call('HMGET', k('jobs', 'counts'), 'queued', 'running')
  local total = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0)
  if total + adding > max_total then return {'quota', 'total', total} end
  local mine = tonumber(redis.call('GET', k('jobs', 'unfinished', scope)) or '0')
  if mine + adding > max_key then return {'quota', 'key', mine} end
  return nil
end
local function insert_job(id, scope, now, request, segments, nseg, fields)
  local seq = redis.call('INCR', k('jobs', 'seq'))
  redis.call('HSET', k('job', id), 'id', id, 'scope', scope, 'status', 'queued', 'created_at', now,
    'seq', seq, 'request', request, 'segments', segments, 'segments_total', nseg, 'segments_done', 0,
    'audio_seconds', 0, 'segments_generated', 0, unpack(fields))
  redis.call('ZADD', k('jobs', 'list', scope), seq, id)
  redis.call('ZADD', k('jobs', 'all'), seq, id)
  redis.call('HINCRBY', k('jobs', 'counts'), 'queued', 1)
  redis.call('INCR', k('jobs', 'unfinished', scope))
  for i = 0, nseg - 1 do redis.call('XADD', STREAM, '*', 'job', id, 'segment', i) end
end
local function optional(fields, name, value)
  if value ~= '' then table.insert(fields, name); table.insert(fields, value) end
end
"""

# ARGV: prefix, scope, idempotency key ('' for none), max total, max per key, now, id, request,
# segments (JSON), segment count, metadata (JSON or ''), webhook url ('').
CREATE_JOB = (
    _PRELUDE
    + """
local scope, idem = ARGV[2], ARGV[3]
if idem ~= '' then
  local existing = redis.call('GET', k('idem', 'job', scope, idem))
  if existing then return {'existing', existing} end
end
local over = check_quota(scope, 1, tonumber(ARGV[4]), tonumber(ARGV[5]))
if over then return over end
local id = ARGV[7]
local fields = {}
optional(fields, 'metadata', ARGV[11])
optional(fields, 'webhook_url', ARGV[12])
optional(fields, 'idempotency_key', idem)
insert_job(id, scope, ARGV[6], ARGV[8], ARGV[9], tonumber(ARGV[10]), fields)
if idem ~= '' then redis.call('SET', k('idem', 'job', scope, idem), id) end
return {'created', id}
"""
)

# ARGV: prefix, scope, idempotency key, max total, max per key, now, batch id, metadata, webhook url,
# job count, then per job: id, request, segments, segment count.
CREATE_BATCH = (
    _PRELUDE
    + """
local scope, idem, now, batch = ARGV[2], ARGV[3], ARGV[6], ARGV[7]
if idem ~= '' then
  local existing = redis.call('GET', k('idem', 'batch', scope, idem))
  if existing then return {'existing', existing} end
end
local n = tonumber(ARGV[10])
local over = check_quota(scope, n, tonumber(ARGV[4]), tonumber(ARGV[5]))
if over then return over end
local fields = {'id', batch, 'scope', scope, 'created_at', now, 'unfinished', n,
  'seq', redis.call('INCR', k('jobs', 'seq'))}
optional(fields, 'metadata', ARGV[8])
optional(fields, 'webhook_url', ARGV[9])
optional(fields, 'idempotency_key', idem)
redis.call('HSET', k('batch', batch), unpack(fields))
for j = 0, n - 1 do
  local at = 11 + j * 4
  insert_job(ARGV[at], scope, now, ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3]), {'batch_id', batch})
  redis.call('RPUSH', k('batch', batch, 'jobs'), ARGV[at])
end
if idem ~= '' then redis.call('SET', k('idem', 'batch', scope, idem), batch) end
return {'created', batch}
"""
)

# ARGV: prefix, job id, now. A claimed segment's job becomes running; returns its status (or false).
START = (
    _PRELUDE
    + """
local job = k('job', ARGV[2])
local status = redis.call('HGET', job, 'status')
if status == 'queued' then
  redis.call('HSET', job, 'status', 'running', 'started_at', ARGV[3])
  redis.call('HINCRBY', k('jobs', 'counts'), 'queued', -1)
  redis.call('HINCRBY', k('jobs', 'counts'), 'running', 1)
  return 'running'
end
return status
"""
)

# ARGV: prefix, job id, segment index, float32 audio, its seconds. Returns the segments done, -1 when
# the job is gone or finished, -2 when the segment was recorded already (generated twice: counted).
RECORD_SEGMENT = (
    _PRELUDE
    + """
local job = k('job', ARGV[2])
local status = redis.call('HGET', job, 'status')
if not status then return -1 end
redis.call('HINCRBY', job, 'segments_generated', 1)
if not unfinished(status) then return -1 end
if redis.call('HSETNX', k('job', ARGV[2], 'seg'), ARGV[3], ARGV[4]) == 0 then return -2 end
redis.call('HINCRBYFLOAT', job, 'audio_seconds', ARGV[5])
local done = redis.call('HLEN', k('job', ARGV[2], 'seg'))
redis.call('HSET', job, 'segments_done', done)
if done >= tonumber(redis.call('HGET', job, 'segments_total'))
    and redis.call('HSETNX', job, 'encoding', 1) == 1 then
  redis.call('XADD', STREAM, '*', 'job', ARGV[2], 'segment', -1)
end
return done
"""
)

# ARGV: prefix, job id, final status, now, result JSON (''), error JSON (''), expires at (''), audio
# (''), its TTL in seconds. Returns 1 if this call finished the job, 0 if it had finished already.
FINISH = (
    _PRELUDE
    + """
local id = ARGV[2]
local job = k('job', id)
local status = redis.call('HGET', job, 'status')
if not status or not unfinished(status) then return 0 end
redis.call('HSET', job, 'status', ARGV[3], 'finished_at', ARGV[4])
local fields = {}
optional(fields, 'result', ARGV[5])
optional(fields, 'error', ARGV[6])
optional(fields, 'expires_at', ARGV[7])
if #fields > 0 then redis.call('HSET', job, unpack(fields)) end
if ARGV[8] ~= '' then redis.call('SET', k('job', id, 'audio'), ARGV[8], 'EX', ARGV[9]) end
redis.call('DEL', k('job', id, 'seg'))
redis.call('HINCRBY', k('jobs', 'counts'), status, -1)
redis.call('HINCRBY', k('jobs', 'counts'), ARGV[3], 1)
redis.call('DECR', k('jobs', 'unfinished', redis.call('HGET', job, 'scope')))
local batch = redis.call('HGET', job, 'batch_id')
if batch then redis.call('HINCRBY', k('batch', batch), 'unfinished', -1) end
return 1
"""
)

# ARGV: prefix, job id. Only finished jobs are deleted (the service cancels first).
DELETE = (
    _PRELUDE
    + """
local id = ARGV[2]
local job = k('job', id)
local f = redis.call('HMGET', job, 'status', 'scope', 'idempotency_key')
if not f[1] or unfinished(f[1]) then return 0 end
redis.call('HINCRBY', k('jobs', 'counts'), f[1], -1)
redis.call('ZREM', k('jobs', 'list', f[2]), id)
redis.call('ZREM', k('jobs', 'all'), id)
if f[3] then redis.call('DEL', k('idem', 'job', f[2], f[3])) end
redis.call('DEL', job, k('job', id, 'seg'), k('job', id, 'audio'))
return 1
"""
)

# ARGV: prefix, batch id, now. Returns 1 the first time every job of the batch has finished.
COMPLETE_BATCH = (
    _PRELUDE
    + """
local batch = k('batch', ARGV[2])
local f = redis.call('HMGET', batch, 'unfinished', 'completed_at')
if not f[1] or tonumber(f[1]) > 0 or f[2] then return 0 end
redis.call('HSET', batch, 'completed_at', ARGV[3])
return 1
"""
)

# ARGV: prefix, now, lease seconds, most. Due webhook deliveries, each leased to the caller: no other
# replica sends it before the lease ends (the caller records the attempt's outcome before that).
CLAIM_DELIVERIES = (
    _PRELUDE
    + """
local due = k('deliveries', 'due')
local now = tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do redis.call('ZADD', due, now + tonumber(ARGV[3]), id) end
return ids
"""
)
