"""
Token-bucket storage for ``rate-limit``: in memory (one gateway) or in Redis (several gateways).

A bucket holds up to ``capacity`` tokens and refills at ``capacity / window`` tokens a second;
taking costs tokens.  One call takes from several buckets all-or-nothing (a message and its
recipients are counted together or not at all), and when it is refused it says how long until
it would succeed, which becomes the retry hint in the 451 reply.

Time always comes from the caller's clock, never from Redis, so tests drive windows with
``task.Clock``; gateways sharing a Redis should keep their clocks in sync (NTP), and a bucket
never refills backwards if one gateway's clock lags another's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

if TYPE_CHECKING:
    from gateway.policy.redis_connection import RedisConnection

_EPSILON = 1e-9


@attrs.frozen
class BucketRequest:
    """Take ``cost`` tokens from bucket ``key`` (full: ``capacity`` tokens, refilled over ``window`` seconds)."""

    key: str
    capacity: float
    window: float
    cost: float


@attrs.frozen
class Decision:
    """``allowed``: the tokens were taken.  Otherwise ``retry_after`` seconds until they would be."""

    allowed: bool
    retry_after: float = 0.0


class IRateLimitBackend(Interface):
    def take(requests: Sequence[BucketRequest]) -> Deferred:
        """Take from every bucket or from none; fire with a L{Decision}."""


def _refill(tokens: float, stamp: float, now: float, r: BucketRequest) -> tuple[float, float]:
    if now > stamp:
        tokens = min(r.capacity, tokens + (now - stamp) * r.capacity / r.window)
        stamp = now
    return tokens, stamp


@implementer(IRateLimitBackend)
class MemoryBuckets:
    """
    Buckets in a bounded LRU dictionary.  When ``max_keys`` is reached the least recently used
    bucket is forgotten, which only ever errs on the lenient side (it comes back full), and
    keeps memory flat however many distinct senders or addresses a client invents.
    """

    def __init__(self, clock: IReactorTime, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, requests: Sequence[BucketRequest]) -> Deferred:
        now = self._clock.seconds()
        states = []
        wait = 0.0
        for r in requests:
            stored_tokens, stored_stamp = self._buckets.get(r.key, (r.capacity, now))
            tokens, stamp = _refill(stored_tokens, stored_stamp, now, r)
            if tokens + _EPSILON < r.cost:
                wait = max(wait, (r.cost - tokens) * r.window / r.capacity)
            states.append((r, tokens, stamp))
        if wait > 0:
            return succeed(Decision(False, wait))
        for r, tokens, stamp in states:
            self._buckets[r.key] = (max(0.0, tokens - r.cost), stamp)
            self._buckets.move_to_end(r.key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return succeed(Decision(True))


# All buckets are read, refilled and checked before any is written, inside one script, so two
# gateways taking from the same bucket at the same moment cannot both get the last token.
# Keys expire once a bucket would be full again, so idle senders cost Redis nothing.
TAKE_SCRIPT = """
local now = tonumber(ARGV[1])
local eps = 1e-9
local wait = 0
local states = {}
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[i * 3 - 1])
  local window = tonumber(ARGV[i * 3])
  local cost = tonumber(ARGV[i * 3 + 1])
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'stamp')
  local tokens = tonumber(s[1])
  local stamp = tonumber(s[2])
  if tokens == nil or stamp == nil then
    tokens = capacity
    stamp = now
  end
  if now > stamp then
    tokens = math.min(capacity, tokens + (now - stamp) * capacity / window)
    stamp = now
  end
  if tokens + eps < cost then
    local w = (cost - tokens) * window / capacity
    if w > wait then wait = w end
  end
  states[i] = {tokens, stamp, cost, window}
end
if wait > 0 then
  return {0, string.format('%.6f', wait)}
end
for i = 1, #KEYS do
  local st = states[i]
  local left = math.max(0, st[1] - st[3])
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.9f', left), 'stamp', string.format('%.6f', st[2]))
  redis.call('PEXPIRE', KEYS[i], math.ceil(st[4] * 1000) + 1000)
end
return {1, '0'}
"""


@implementer(IRateLimitBackend)
class RedisBuckets:
    """
    Buckets in Redis under ``<prefix>:rl:<key>``, taken atomically by one Lua script (EVALSHA,
    loaded on first use).  ``connection`` is a L{gateway.policy.redis_connection.RedisConnection}.
    """

    def __init__(self, connection: RedisConnection, clock: IReactorTime, prefix: str = "graphsmtp") -> None:
        self._connection = connection
        self._clock = clock
        self._prefix = prefix

    def take(self, requests: Sequence[BucketRequest]) -> Deferred:
        keys = [f"{self._prefix}:rl:{r.key}" for r in requests]
        args = [f"{self._clock.seconds():.6f}"]
        for r in requests:
            args += [repr(float(r.capacity)), repr(float(r.window)), repr(float(r.cost))]
        d = self._connection.call(lambda redis: redis.eval(TAKE_SCRIPT, keys, args))
        d.addCallback(_decision)
        return d


def _decision(reply: Any) -> Decision:
    allowed, wait = reply
    return Decision(bool(int(allowed)), float(wait))


__all__ = ["BucketRequest", "Decision", "IRateLimitBackend", "MemoryBuckets", "RedisBuckets", "TAKE_SCRIPT"]
