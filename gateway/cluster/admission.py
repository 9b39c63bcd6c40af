"""
Mailbox admission shared by every gateway of a cluster (``[cluster]`` + ``[redis]``).

Graph's limits are per app and mailbox across every gateway (4 requests in flight; Exchange's
30 messages a minute), so gateways behind one load balancer must pace each mailbox together.
The queue runner's per-mailbox ready queues (L{gateway.queue.mailboxes}) pace each node
alone; with ``[cluster]`` the Graph deliverer also asks L{ClusterAdmission} (``admit`` → a
slot or L{Later}, ``pause``, ``succeeded``; see L{IMailboxAdmission}) before each send, each
answer being one Lua script in Redis (L{gateway.cluster.scripts}).  A ``Later`` becomes a
not-attempted ``Transient`` with ``pause_until``, so the runner's queue for that mailbox sleeps
until the cluster's turn comes, at no cost:

- a slot is a *lease* that expires ``lease_ttl`` after its last renewal; a timer renews this
  node's leases every third of the TTL while their requests run, so a node that dies frees its
  slots within the TTL, and no lock is ever held across a Graph request;
- pacing books each message a start time in the mailbox's shared time line (first asked, first
  served, whichever node asks), plus a hard sliding-window count of starts;
- Retry-After and "needs admin" pauses are written to Redis and honoured by every node
  (L{ITenantPauses}).

When Redis fails (error or timeout) the node says ``cluster state degraded`` once and keeps
delivering with its share of each limit (``limit / expected_nodes``), asking Redis again every
``retry`` seconds.  Switching costs one rate window each way: a node that loses Redis starts
nothing alone for L{ClusterAdmission.solo_wait} (a window: the starts Redis counted are unknown
to it); a node that finds Redis again writes its solo requests still running there as leases,
then starts nothing for a window plus L{ClusterAdmission.rejoin_lag} (how long the other nodes
may take to find Redis too: their solo starts are not in Redis), watching Redis meanwhile; then
it says ``cluster state ok``.  A Redis that lost its data while no call failed shows by its
epoch (L{gateway.cluster.scripts}): a node that relied on the old one waits the same way.  So
an outage every node sees never takes the cluster over a limit; docs/scaling.md lists the
failures this does not cover (one node cut off from Redis alone, very long requests).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Hashable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.cluster import scripts
from gateway.cluster.continuity import RedisContinuity
from gateway.cluster.values import (
    ClusterSlot,
    IMailboxAdmission,
    ITenantPauses,
    Later,
    LocalMailbox,
    mailbox_name,
    short_digest,
)
from gateway.config.cluster import ClusterConfig
from gateway.delivery.graph.scheduler import THROTTLE_BACKOFF

OK = "ok"
DEGRADED = "degraded"
REJOINING = "rejoining"

#: A booked start claimed this late is re-booked (the message was held up elsewhere).
STALE_CLAIM = 30.0
#: A booked start nobody claimed is forgotten this long after its time (a node died).
BOOKING_GRACE = 120.0
#: Redis keys of an idle mailbox disappear after this long.
KEEP = 86400
#: A node rejoining waits this long between checks that its solo requests have ended.
REJOIN_POLL = 0.25


@implementer(IMailboxAdmission, ITenantPauses)
class ClusterAdmission(Service):
    """
    ``redis`` is a L{gateway.policy.redis_connection.RedisConnection} (``call``, ``key_prefix``);
    ``concurrency``, ``rate`` (messages per ``cluster.rate_window``), ``burst`` and ``max_hold``
    are the ``[graph]`` mailbox limits, which hold for the whole cluster.
    """

    log = Logger()

    def __init__(self, redis: Any, cluster: ClusterConfig, clock: IReactorTime, *, concurrency: int = 2,
                 rate: float = 30.0, burst: int = 1, max_hold: float = 2.0) -> None:
        self.redis = redis
        self.cluster = cluster
        self.clock = clock
        self.concurrency = concurrency
        self.rate = rate
        self.max_hold = max_hold
        # The hard sliding-window check counts over a slightly longer window than the limit's
        # (a quarter second to one second), so a request that reaches Graph a little after its
        # admission (the digest check, a thread hop, a busy machine) still falls inside the
        # window Graph counts in; pacing spaces starts to match.
        self.window = cluster.rate_window + min(1.0, max(0.25, cluster.rate_window * 0.05))
        self.limit = max(1, int(rate))
        self.interval = self.window / rate
        self.tolerance = (burst - 1) * self.interval
        shares = cluster.expected_nodes
        self.solo_concurrency = max(1, concurrency // shares)
        self.solo_limit = max(1, int(rate // shares))
        self.solo_interval = self.window / self.solo_limit
        self.base = f"{redis.key_prefix}:cluster:{cluster.name}"
        self.state = OK
        self.state_since = clock.seconds()
        self.state_detail = ""
        self.degraded_count = 0
        self._mailboxes: dict[Hashable, LocalMailbox] = {}
        self._leases: dict[str, ClusterSlot] = {}
        #: Requests started alone and still running (written into Redis when it answers again).
        self._solo: set[ClusterSlot] = set()
        #: Whether Redis still holds the state this node's starts were counted in.
        self._continuity = RedisContinuity(redis, cluster.node_id, clock)
        self._epoch_key = f"{self.base}:epoch"
        #: The admits and the tick waiting for the one INFO in flight (L{_check_server}).
        self._server_waiters: list[Deferred] = []
        self._tenants: dict[str, tuple[float, str]] = {}
        self._lease_numbers = itertools.count(1)
        self._ticker: Optional[LoopingCall] = None
        self._probing = False
        self._rejoin_at = 0.0
        self.setName("cluster-admission")

    # -- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.log.info("cluster {name}: node {node} shares mailbox limits through Redis ({nodes} nodes expected)",
                      name=self.cluster.name, node=self.cluster.node_id, nodes=self.cluster.expected_nodes)
        self._ticker = LoopingCall(self._tick_safely)
        self._ticker.clock = self.clock
        self._ticker.start(self.tick_interval, now=True)  # _tick_safely never fails: the timer runs on

    def stopService(self) -> Any:
        super().stopService()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._ticker = None

    @property
    def tick_interval(self) -> float:
        """Leases are renewed (and shared pauses read) three times per TTL."""
        return min(self.cluster.lease_ttl / 3.0, self.cluster.retry)

    @property
    def solo_wait(self) -> float:
        """
        How long after losing Redis a node starts nothing alone: a window (the starts Redis
        counted are unknown here), and at least until this node would have found a Redis that
        came back (``rejoin_lag``) after the others' calls could have noticed it was away (their
        timeouts): a node whose calls merely waited through a short outage never degrades, and
        shares again at once.
        """
        connection = self.redis.config
        return max(self.window, self.rejoin_lag + connection.connect_timeout + connection.reply_timeout)

    @property
    def rejoin_lag(self) -> float:
        """
        How long after Redis is back the slowest live node may still start alone: until its
        next reconnection (the connection retries every ``retry`` at most in a cluster), one
        connection attempt (with Sentinel, discovery first), its next probe and that probe's
        reply.
        """
        connection = self.redis.config
        attempt = connection.connect_timeout * (2 if connection.sentinels else 1)
        return self.cluster.retry + attempt + self.tick_interval + connection.reply_timeout

    # -- keys ------------------------------------------------------------------------------

    def _keys(self, key: Hashable) -> list[str]:
        base = f"{self.base}:mb:{mailbox_name(key)}"
        return [f"{base}:leases", f"{base}:state", f"{base}:booked", f"{base}:starts", f"{self.base}:tenants"]

    def _local(self, key: Hashable) -> LocalMailbox:
        local = self._mailboxes.get(key)
        if local is None:
            local = self._mailboxes[key] = LocalMailbox()
        return local

    # -- admission -------------------------------------------------------------------------

    def admit(self, key: Hashable, ticket: str) -> Deferred:
        now = self.clock.seconds()
        local = self._local(key)
        if local.paused_until > now:
            return succeed(Later(local.paused_until, local.pause_reason or "mailbox paused"))
        tenant = self.tenant_paused(key[0]) if isinstance(key, tuple) and len(key) == 2 else None
        if tenant is not None:
            return succeed(Later(tenant[0], f"tenant paused: {tenant[1]}"))
        if self.state == DEGRADED:
            return self._admit_solo(key, local, now)
        if self.state == REJOINING:
            return succeed(Later(max(now + REJOIN_POLL, self._rejoin_at), "rejoining the cluster"))
        return self._ask_again(key, ticket, now + self.max_hold)

    def _ask(self, key: Hashable, ticket: str, hold_until: float) -> Deferred:
        now = self.clock.seconds()
        lease = f"{self.cluster.node_id}:{next(self._lease_numbers)}:{ticket}"
        tenant_field = short_digest(key[0]) if isinstance(key, tuple) and len(key) == 2 else ""
        args = [repr(now), ticket, lease, self.concurrency, repr(self.interval), repr(self.tolerance),
                repr(self.cluster.lease_ttl), repr(max(0.0, hold_until - now)), repr(self.window), self.limit,
                STALE_CLAIM, BOOKING_GRACE, tenant_field, KEEP]
        keys = [self._epoch_key, *self._keys(key)]
        d = self.redis.call(lambda r: r.eval(scripts.ADMIT, keys, self._continuity.epoch_args() + args))

        def answered(reply: Any) -> Any:
            verdict = int(reply[0])
            if verdict == 1:
                return self._started(key, str(reply[1]), solo=False)
            if verdict == 2:
                at = float(reply[1])
                return deferLater(self.clock, max(0.0, at - self.clock.seconds()), self._ask_again, key, ticket,
                                  hold_until)
            if verdict == 3:
                if self._continuity.epoch_seen(str(reply[1])):
                    return self._ask_again(key, ticket, hold_until)
                self._state_lost("Redis lost the cluster's state (its epoch changed)")
                return Later(self._rejoin_at, "rejoining the cluster (Redis lost its state)")
            return Later(float(reply[1]), str(reply[2]))

        def failed(failure: Any) -> Any:
            self._degrade(failure)
            return self._admit_solo(key, self._local(key), self.clock.seconds())

        d.addCallbacks(answered, failed)
        return d

    def _ask_again(self, key: Hashable, ticket: str, hold_until: float) -> Any:
        if self.state != OK:
            return self.admit(key, ticket)
        if self._continuity.unsure:  # the connection was made anew (a held slot too): the same server?
            return self._check_server().addCallback(lambda _: self._ask_again(key, ticket, hold_until))
        return self._ask(key, ticket, hold_until)

    def _started(self, key: Hashable, lease: Optional[str], solo: bool) -> ClusterSlot:
        local = self._local(key)
        local.in_flight += 1
        local.started += 1
        local.max_in_flight = max(local.max_in_flight, local.in_flight)
        if solo:
            local.solo_in_flight += 1
        local.starts.append(self.clock.seconds())
        self._forget_old_starts(local, self.clock.seconds())
        slot = ClusterSlot(self, key, lease)
        if lease is not None:
            self._leases[lease] = slot
        else:
            self._solo.add(slot)
        return slot

    def _forget_old_starts(self, local: LocalMailbox, now: float) -> None:
        while local.starts and local.starts[0] <= now - self.window + 0.0001:
            local.starts.popleft()

    def _admit_solo(self, key: Hashable, local: LocalMailbox, now: float) -> Deferred:
        """While Redis is away: this node's share of each limit, counted here alone."""
        self._forget_old_starts(local, now)
        if local.in_flight >= self.solo_concurrency:
            return succeed(Later(now + self.solo_interval, "mailbox has requests in flight (cluster degraded)"))
        # Starts counted in Redis before it went away are unknown here: a node starts alone only
        # once a whole window has passed since (and later, see solo_wait), so the old and the
        # new counts never add up.
        start = max(now, local.tat, self.state_since + self.solo_wait)
        if len(local.starts) >= self.solo_limit:
            start = max(start, local.starts[0] + self.window + 0.0001)
        if start - now > self.max_hold:
            return succeed(Later(start, "pacing this mailbox (cluster degraded)"))
        local.tat = start + self.solo_interval
        if start > now:
            return deferLater(self.clock, start - now, self._solo_now, key)
        return succeed(self._started(key, None, solo=True))

    def _solo_now(self, key: Hashable) -> Any:
        local = self._local(key)
        now = self.clock.seconds()
        if self.state != DEGRADED:
            # Redis answered while this start waited its turn: the rejoin wait of every node
            # counts on solo starts ending there.
            return Later(now + REJOIN_POLL, "rejoining the cluster")
        if local.in_flight >= self.solo_concurrency:
            return Later(now + self.solo_interval, "mailbox has requests in flight (cluster degraded)")
        return self._started(key, None, solo=True)

    def _release(self, slot: ClusterSlot) -> None:
        local = self._local(slot.key)
        local.in_flight = max(0, local.in_flight - 1)
        if slot.lease is None:
            self._solo.discard(slot)
            local.solo_in_flight = max(0, local.solo_in_flight - 1)
            if self.state == REJOINING:
                self._maybe_rejoined()
            return
        self._leases.pop(slot.lease, None)
        if self.state in (OK, REJOINING):
            leases = self._keys(slot.key)[0]
            self.redis.call(lambda r: r.zrem(leases, slot.lease)).addErrback(self._degrade)

    # -- feedback ----------------------------------------------------------------------------

    def pause(self, key: Hashable, seconds: Optional[float], reason: str) -> float:
        now = self.clock.seconds()
        local = self._local(key)
        if seconds is None:
            first, factor, cap = THROTTLE_BACKOFF
            seconds = min(cap, first * factor ** local.throttles)
        local.throttles += 1
        until = now + seconds
        if until > local.paused_until:
            local.paused_until, local.pause_reason = until, reason
        local.tat = max(local.tat, local.paused_until)
        if self.state == OK:
            self._share_pause(key, local)
        return local.paused_until

    def _share_pause(self, key: Hashable, local: LocalMailbox) -> None:
        keys = self._keys(key)
        self.redis.call(lambda r: r.eval(scripts.PAUSE, [keys[1], keys[2]],
                                         [repr(local.paused_until), local.pause_reason, KEEP])).addErrback(self._degrade)

    def succeeded(self, key: Hashable) -> None:
        local = self._mailboxes.get(key)
        if local is not None:
            local.throttles = 0

    def snapshot(self) -> tuple:
        now = self.clock.seconds()
        return tuple((key, m.in_flight, m.paused_until, m.pause_reason, max(m.paused_until, m.tat, now))
                     for key, m in self._mailboxes.items())

    # -- tenants -----------------------------------------------------------------------------

    def tenant_paused(self, tenant_key: Hashable) -> Optional[tuple[float, str]]:
        seen = self._tenants.get(short_digest(tenant_key))
        if seen is not None and seen[0] > self.clock.seconds():
            return seen
        return None

    def pause_tenant(self, tenant_key: Hashable, until: float, detail: str) -> None:
        field = short_digest(tenant_key)
        current = self._tenants.get(field)
        if current is None or current[0] < until:
            self._tenants[field] = (until, detail)
        if self.state == OK:
            self._share_tenant(field, until, detail)

    def _share_tenant(self, field: str, until: float, detail: str) -> None:
        self.redis.call(lambda r: r.eval(scripts.TENANT, [f"{self.base}:tenants"],
                                         [field, repr(until), detail])).addErrback(self._degrade)

    def resume_tenant(self, tenant_key: Hashable) -> None:
        field = short_digest(tenant_key)
        if self._tenants.pop(field, None) is not None and self.state == OK:
            self.redis.call(lambda r: r.eval(scripts.TENANT, [f"{self.base}:tenants"],
                                             [field, "0", ""])).addErrback(self._degrade)

    # -- the timer: renew leases, read shared pauses, probe Redis -----------------------------

    def _tick_safely(self) -> Deferred:
        """A step that fails (a bug) is logged and the next tick comes: a stopped timer would renew no lease again."""
        return maybeDeferred(self._tick).addErrback(
            lambda f: self.log.failure("cluster: a timer step failed; trying again at the next tick", f))

    def _tick(self) -> Optional[Deferred]:
        self._forget_idle(self.clock.seconds())
        if self.state != OK:
            return self._probe()
        if self._continuity.unsure:  # the connection was made anew since: the same server?
            return self._check_server().addCallback(lambda _: self._tick())
        return self._renew_and_read()

    def _forget_idle(self, now: float) -> None:
        """Mailboxes with nothing in flight, paused or counted here are forgotten (memory stays flat)."""
        for key, local in list(self._mailboxes.items()):
            self._forget_old_starts(local, now)
            if not local.in_flight and not local.starts and local.paused_until <= now and local.tat <= now:
                del self._mailboxes[key]

    def _renew_and_read(self) -> Deferred:
        slots = list(self._leases.items())
        now = self.clock.seconds()

        def work(r: Any) -> Deferred:
            renewed = succeed(None)
            if slots:
                keys = [self._epoch_key] + [self._keys(slot.key)[0] for _, slot in slots]
                values = [repr(now + self.cluster.lease_ttl)] + [l for l, _ in slots]

                def renew() -> Deferred:
                    return r.eval(scripts.RENEW, keys, self._continuity.epoch_args() + values)

                renewed = renew().addCallback(self._renewed, slots, renew)
            renewed.addCallback(lambda _: r.hgetall(f"{self.base}:tenants"))
            return renewed

        d = self.redis.call(work)
        d.addCallbacks(self._read_tenants, self._degrade)
        return d

    def _renewed(self, reply: Any, slots: list, again: Optional[Callable[[], Deferred]]) -> Any:
        if reply and int(reply[0]) == 3:  # the epoch check, not one 0/1 per lease
            if not self._continuity.epoch_seen(str(reply[1])):
                self._state_lost("Redis lost the cluster's state (its epoch changed)")
            elif again is not None:
                return again().addCallback(self._renewed, slots, None)
            return None
        for (lease, slot), kept in zip(slots, reply, strict=False):
            if not int(kept) and not slot.released:
                self.log.warn("cluster lease {lease} expired before its request ended (was Redis slow?)", lease=lease)

    def _read_tenants(self, table: Any) -> None:
        fresh: dict[str, tuple[float, str]] = {}
        for field, value in (table or {}).items():
            stamp, _, detail = str(value).partition("|")
            try:
                fresh[str(field)] = (float(stamp), detail)
            except ValueError:
                continue
        now = self.clock.seconds()
        for field, (until, detail) in fresh.items():
            known = self._tenants.get(field)
            if until > now and (known is None or known[0] < until):
                self.log.warn("cluster: tenant {tenant} paused on every node until {until:.0f} ({detail})",
                              tenant=field, until=until, detail=detail, cluster_tenant_paused=field)
        if self.state != OK:  # pauses taken alone are not in Redis yet (shared on rejoining)
            for field, (until, detail) in self._tenants.items():
                if until > now and fresh.get(field, (0.0, ""))[0] < until:
                    fresh[field] = (until, detail)
        self._tenants = fresh

    def _degrade(self, failure: Any) -> None:
        if self.state == DEGRADED:
            return
        error = getattr(failure, "value", failure)
        self.state, self.state_since = DEGRADED, self.clock.seconds()
        self.state_detail = f"Redis unreachable ({type(error).__name__})"
        self.degraded_count += 1
        self.log.warn(
            "cluster state degraded: {detail}; delivering with this node's share of each mailbox limit "
            "(1/{nodes}) until Redis answers again", detail=self.state_detail, nodes=self.cluster.expected_nodes,
            cluster_state=DEGRADED)

    def _probe(self) -> Optional[Deferred]:
        if self._probing:
            return None
        if self.state == REJOINING:
            return self._while_rejoining()
        self._probing = True
        d = self.redis.call(self._write_running)

        def back(_: Any) -> None:
            wait = self._wait_before_sharing("Redis answers again; waiting before sharing")
            self.log.info("cluster: Redis answers again; node {node} rejoins in {seconds:.1f}s",
                          node=self.cluster.node_id, seconds=wait)

        def done(result: Any) -> None:
            self._probing = False

        d.addCallbacks(back, lambda f: None)
        d.addBoth(done)
        return d

    def _while_rejoining(self) -> Deferred:
        """
        Keep the adopted leases alive and watch Redis while waiting: if it fails, the node is
        degraded again; if the connection was made anew (Redis went away and came back, and
        the others may find it only now), the wait starts again.
        """
        if self.redis.generation != self._continuity.generation:
            self._state_lost("the Redis connection was made anew")
        d = self._renew_and_read()
        d.addCallback(lambda _: self._maybe_rejoined())
        return d

    def _write_running(self, r: Any) -> Deferred:
        """
        Redis answers again, or lost its state: this node's requests still running are written
        there as leases (those started alone get one), so every node counts them in each
        mailbox's concurrency.
        """
        solo = list(self._solo)
        running = [(lease, slot) for lease, slot in self._leases.items() if not slot.released]
        if not solo and not running:
            return r.ping()
        new_leases = [f"{self.cluster.node_id}:{next(self._lease_numbers)}:solo" for _ in solo]
        leased = [slot for _, slot in running]
        leases = [lease for lease, _ in running] + new_leases
        keys = [self._keys(slot.key)[0] for slot in leased + solo]
        d = r.eval(scripts.ADOPT, keys, [repr(self.clock.seconds() + self.cluster.lease_ttl), KEEP] + leases)

        def adopted(_: Any) -> None:
            for slot, lease, key in zip(leased + solo, leases, keys, strict=True):
                if slot.released:  # ended meanwhile: its lease must not hold a slot
                    self.redis.call(lambda r, k=key, l=lease: r.zrem(k, l)).addErrback(self._degrade)
            for slot, lease in zip(solo, new_leases, strict=True):
                if slot.released:
                    continue
                self._solo.discard(slot)
                slot.lease = lease
                self._leases[lease] = slot
                local = self._local(slot.key)
                local.solo_in_flight = max(0, local.solo_in_flight - 1)

        return d.addCallback(adopted)

    # -- the epoch: a Redis that lost its state -----------------------------------------------

    def _check_server(self) -> Deferred:
        """
        Before sharing on a connection made anew: is it the server this node relied on?  One
        INFO at a time: the admits (a backlog asks for every mailbox at once) and the tick that
        need the answer meanwhile wait for it.
        """
        waiter: Deferred = Deferred()
        self._server_waiters.append(waiter)
        if len(self._server_waiters) == 1:
            d = self.redis.call(self._continuity.same_server).addCallbacks(self._server_seen, self._degrade)
            d.addBoth(self._server_checked)
        return waiter

    def _server_seen(self, same: bool) -> None:
        if not same:
            self._state_lost("another Redis server answers (restarted or failed over)")

    def _server_checked(self, result: Any) -> None:
        if isinstance(result, Failure):
            self.log.failure("cluster: checking the Redis server failed", result)
        waiters, self._server_waiters = self._server_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _state_lost(self, detail: str) -> None:
        """
        Redis no longer holds the state this node's starts were counted in (L{RedisContinuity}):
        the last window's starts are unknown to it, so write the running requests back and
        share again only after a window (+ the others' lag), as after an outage.
        """
        if self.state == DEGRADED:
            return
        was_sharing = self.state == OK
        wait = self._wait_before_sharing(detail)
        if was_sharing:
            self.state_since = self.clock.seconds()
            self.log.warn("cluster: {detail}; node {node} shares mailbox limits again in {seconds:.1f}s",
                          detail=detail, node=self.cluster.node_id, seconds=wait, cluster_state=REJOINING)
        self.redis.call(self._write_running).addErrback(self._degrade)

    def _wait_before_sharing(self, detail: str) -> float:
        """
        REJOINING from now for a window + ``rejoin_lag``: the other nodes' solo starts, which
        Redis never saw, leave the window meanwhile.  The wait covers whatever Redis kept or
        lost, so once it is over the node takes Redis's epoch and server as they are then (an
        old epoch would be taken for a second loss, a server seen before a flap for another).
        """
        wait = self.window + self.rejoin_lag
        self._continuity.forget()
        self.state, self._rejoin_at = REJOINING, self.clock.seconds() + wait
        self.state_detail = detail  # /healthz: why the node waits (again)
        return wait

    def _maybe_rejoined(self) -> None:
        if self.state != REJOINING or self.clock.seconds() < self._rejoin_at:
            return
        if any(m.solo_in_flight for m in self._mailboxes.values()):
            return
        was = self.state_since
        self.state, self.state_since, self.state_detail = OK, self.clock.seconds(), ""
        self.log.info("cluster state ok: node {node} shares mailbox limits through Redis again "
                      "(after {seconds:.0f}s without sharing)", node=self.cluster.node_id, seconds=self.state_since - was,
                      cluster_state=OK)
        # Retry-After and tenant pauses taken meanwhile were this node's alone: every node honours them now.
        for key, local in list(self._mailboxes.items()):
            if local.paused_until > self.state_since:
                self._share_pause(key, local)
        for field, (until, detail) in list(self._tenants.items()):
            if until > self.state_since:
                self._share_tenant(field, until, detail)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict:
        """For ``/healthz``, ``/metrics`` and the status page."""
        return {"name": self.cluster.name, "node": self.cluster.node_id, "state": self.state,
                "since": self.state_since, "detail": self.state_detail,
                "expected_nodes": self.cluster.expected_nodes, "degraded_count": self.degraded_count}


__all__ = ["ClusterAdmission", "ClusterSlot", "IMailboxAdmission", "ITenantPauses", "mailbox_name",
           "Later", "OK", "DEGRADED", "REJOINING"]
