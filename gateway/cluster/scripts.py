"""
The Lua scripts behind cluster-wide mailbox admission.  Each decision is one script, so Redis
runs it atomically: two gateways can never both take the last slot of a mailbox.  No script
waits and no lock outlives a script; a Graph request runs while only a *lease* (an entry in a
sorted set scored by its expiry) says the slot is taken.

Time is the caller's clock (seconds as a decimal string), like the rate-limit buckets: the
gateways of one cluster keep their clocks in sync with NTP.  Numbers come back as strings,
because Redis would truncate a Lua number reply to an integer.

Keys of one mailbox (``<base>`` = ``<prefix>:cluster:<name>:mb:<tenant>:<mailbox>``):

- ``<base>:leases``  sorted set lease id → expiry: the requests in flight;
- ``<base>:state``   hash ``tat`` (pacing: theoretical arrival time), ``paused_until``, ``pause_reason``;
- ``<base>:booked``  sorted set queue id → start time: the slot each waiting message was given.
  A message told to come back at T finds its slot still there, whichever node it is on, so the
  mailbox's messages start in the order they first asked (fair across nodes: a node with a
  backlog books slots one after another like everyone else; it cannot jump the line);
- ``<base>:starts``  sorted set lease id → start time within the last window: the hard
  "no more than ``mailbox_rate`` in any sliding window" check.

And per cluster: ``<prefix>:cluster:<name>:tenants``, hash tenant → ``"<until>|<detail>"``, and
``<prefix>:cluster:<name>:epoch``: a random value written by the first node that finds it
missing, never expiring.  A Redis that lost its data (a restart without persistence, a
failover to an empty replica) has no epoch, or another one, even when no node's call failed
meanwhile: ADMIT and RENEW check it first, so every node learns that the counts it relied on
are gone.
"""

#: The start of ADMIT and RENEW.  KEYS[1] the epoch key; ARGV[1] the epoch this node knows
#: ("" for none yet), ARGV[2] a new one to write if it is missing.  Returns from the script
#: with {3, epoch, created ("1"/"0")} when the node's epoch is not Redis's.
_EPOCH_CHECK = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[2])
  return {3, ARGV[2], '1'}
end
if epoch ~= ARGV[1] then
  return {3, epoch, '0'}
end
"""

#: KEYS: epoch, leases, state, booked, starts, tenants.
#: ARGV: known epoch, new epoch, then now, ticket, lease id, concurrency, interval, tolerance,
#: lease ttl, max hold, window, limit, stale claim, booking grace, tenant field, keep (key
#: expiry, s).  Returns {1, lease id} (start now), {2, at} (wait until ``at`` then ask again: the
#: slot is held), {0, retry_at, reason} (not now), or the epoch check's {3, …}.
ADMIT = _EPOCH_CHECK + """
table.remove(KEYS, 1)
table.remove(ARGV, 1)
table.remove(ARGV, 1)
local now = tonumber(ARGV[1])
local ticket = ARGV[2]
local window = tonumber(ARGV[9])
local keep = tonumber(ARGV[14])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window + 0.0001)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[12]))
local tenant = redis.call('HGET', KEYS[5], ARGV[13])
if tenant then
  local sep = string.find(tenant, '|', 1, true)
  local tenant_until = tonumber(string.sub(tenant, 1, sep - 1))
  if tenant_until > now then
    return {0, tostring(tenant_until), 'tenant paused: ' .. string.sub(tenant, sep + 1)}
  end
end
local paused = tonumber(redis.call('HGET', KEYS[2], 'paused_until') or '0')
if paused > now then
  redis.call('ZREM', KEYS[3], ticket)
  return {0, tostring(paused), redis.call('HGET', KEYS[2], 'pause_reason') or 'mailbox paused'}
end
local interval = tonumber(ARGV[5])
local booked = redis.call('ZSCORE', KEYS[3], ticket)
local start = nil
if booked then start = tonumber(booked) end
if (not start) or start < now - tonumber(ARGV[11]) then
  local tat = tonumber(redis.call('HGET', KEYS[2], 'tat') or '0')
  start = math.max(now, tat - tonumber(ARGV[6]))
  redis.call('HSET', KEYS[2], 'tat', tostring(math.max(tat, start) + interval))
  redis.call('ZADD', KEYS[3], tostring(start), ticket)
  redis.call('EXPIRE', KEYS[2], keep)
  redis.call('EXPIRE', KEYS[3], keep)
end
if start - now > tonumber(ARGV[8]) then
  return {0, tostring(start), 'pacing this mailbox'}
end
if start > now then
  return {2, tostring(start)}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  if now - start < tonumber(ARGV[8]) then
    -- Keep the slot a little: a request in flight ends soon, and this message is next.
    return {2, tostring(now + math.min(interval, 0.25))}
  end
  redis.call('ZREM', KEYS[3], ticket)
  return {0, tostring(now + interval), 'mailbox has requests in flight'}
end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[10]) then
  redis.call('ZREM', KEYS[3], ticket)
  local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  return {0, tostring(tonumber(oldest[2]) + window + 0.0001), 'mailbox rate reached'}
end
redis.call('ZREM', KEYS[3], ticket)
redis.call('ZADD', KEYS[1], tostring(now + tonumber(ARGV[7])), ARGV[3])
redis.call('ZADD', KEYS[4], tostring(now), ARGV[3])
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[4], keep)
return {1, ARGV[3]}
"""

#: KEYS: epoch, then the leases set of each lease.  ARGV: known epoch, new epoch, new expiry,
#: then one lease id per leases key.  Returns one 1 (renewed) or 0 (lost: it expired and may be
#: someone else's slot now) per lease, or the epoch check's {3, …}.
RENEW = _EPOCH_CHECK + """
table.remove(KEYS, 1)
table.remove(ARGV, 1)
table.remove(ARGV, 1)
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, ARGV[1], ARGV[i + 1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

#: KEYS: state, booked.  ARGV: until, reason, keep.  A pause only ever grows; everything booked
#: inside it is void and pacing restarts at its end.  Returns the pause's end.
PAUSE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('HSET', KEYS[1], 'paused_until', ARGV[1], 'pause_reason', ARGV[2])
  current = wanted
end
redis.call('DEL', KEYS[2])
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < current then redis.call('HSET', KEYS[1], 'tat', tostring(current)) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return tostring(current)
"""

#: KEYS: tenants.  ARGV: tenant field, until (0: resume), detail.  A pause only grows; 0 clears.
TENANT = """
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return '0'
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local sep = string.find(current, '|', 1, true)
  if tonumber(string.sub(current, 1, sep - 1)) >= tonumber(ARGV[2]) then
    return string.sub(current, 1, sep - 1)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return ARGV[2]
"""

#: KEYS: the leases set of each lease.  ARGV: expiry, keep (key expiry, s), then one lease id
#: per key.  A node that finds Redis again (or finds it lost its state) writes its requests still
#: running, those it started alone included, so they count.
ADOPT = """
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[1], ARGV[i + 2])
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return #KEYS
"""

__all__ = ["ADMIT", "RENEW", "PAUSE", "TENANT", "ADOPT"]
