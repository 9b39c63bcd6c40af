"""
The queue runner: hands entries to the deliverer when their sending mailbox can start them, and
applies the outcomes to the spool.

Two waits, both cost-free per entry:

- **Waiting for its time** (backoff): a heap of ``(due, seq, queue_id)`` plus a dict of the
  current due time per id (stale heap items are skipped).  O(log n) per step, so 100,000 queued
  entries neither slow start-up nor each delivery.  Entries are loaded from disk only when due;
  freshly committed ones are handed over in memory by the spool's commit notification.
- **Waiting for its mailbox** (L{gateway.queue.mailboxes.MailboxQueues}): a due entry waits in
  the ready queue of its sending mailbox until a slot is free, the mailbox's pause (a 429's
  Retry-After, a tenant pause) has ended and its pacing token has arrived.  Nothing is read,
  prepared or rescheduled meanwhile; a slot freeing, a pause ending or a token arriving starts
  exactly the next entry.  ``[queue] concurrency`` bounds the deliveries in flight over all
  mailboxes together.

The mailbox of an entry is the deliverer's L{IMailboxRouting.mailbox_key} (the sending mailbox
recorded at intake).  A deliverer without it, and an entry whose mailbox the runner cannot know
without reading its record (after a restart), fall back: the record is read once when due.

Backoff counts failures, not waits: an attempt whose cause is a wait (a honoured 429, a tenant
pause) never advances the backoff step.  Prompt drain: when a delivery for a tenant succeeds,
every message of that tenant deferred by a shared cause (token endpoint down, Graph 5xx, no
connection) is due at once, released at its mailbox's pace; after a restart the same holds for
entries whose last failure was such a cause.

Messages from other processes (the sendmail command) and admin requests (graphsmtp-queue
retry/delete/requeue while the daemon runs) arrive through the spool's incoming/ directory,
which is scanned every ``incoming_interval`` seconds and whenever L{QueueRunner.kick} is called
(the service may wire a signal such as SIGUSR2 to it).

One log line per state change of a message, carrying the structured fields ``queue_id``,
``from``, ``to``, ``size``, ``mailbox``, ``delay`` (seconds since received), ``status``
(sent/deferred/bounced), ``attempt`` and ``reason``: ``delivered {queue_id}``,
``deferred {queue_id} attempt {n} retry in {s}s: {reason}``, ``failed {queue_id}: {reason}``
(``received`` is logged by intake, or by the spool for sendmail).  Nothing is logged per wait.
"""

from __future__ import annotations

import heapq
import itertools
import random as _random
from collections import deque
from typing import Any, Callable, Hashable, Optional, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config.model import QueueConfig
from gateway.delivery.interfaces import (
    SHARED_CAUSES,
    WAIT_CAUSES,
    Delivered,
    IDeliverer,
    IDeliveryObserver,
    IMailboxRouting,
    MailboxKey,
    Permanent,
    Transient,
)
from gateway.queue.backoff import retry_delay
from gateway.queue.mailboxes import MailboxQueues
from gateway.spool.entry import AttemptRecord, SpoolEntry
from gateway.spool.interfaces import IQueueSpool, ISpool, SpoolError

HISTORY_LIMIT = 50
EXPIRED_STATUS = "4.4.7"
# A loaded record whose real next attempt is later than its schedule hint by more than this
# is put back to wait; smaller differences are clock noise.
_EARLY_SLACK = 1.0
#: Records read at once to learn the mailbox of due entries the runner has not seen yet.
CLASSIFY_CONCURRENCY = 4


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@attrs.define
class RunnerStats:
    """Counters for the status page and metrics."""

    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    possibly_delivered: int = 0
    deliverer_errors: int = 0
    #: Deliveries started (each one a deliver() call).
    started: int = 0
    #: Entries released early because their tenant recovered from a shared outage.
    released_after_outage: int = 0


class QueueRunner(Service):
    # The namespace from before the runner left gateway.spool: operators filter on it.
    log = Logger(namespace="gateway.spool.runner")

    def __init__(self, spool: ISpool, deliverer: IDeliverer, config: QueueConfig, clock: IReactorTime,
                 observers: Sequence[IDeliveryObserver] = (), random: Callable[[], float] = _random.random,
                 incoming_interval: float = 5.0, cache_limit: int = 10000) -> None:
        self.spool = spool
        self.deliverer = deliverer
        self.config = config
        self.clock = clock
        self.observers = tuple(observers)
        self.random = random
        self.incoming_interval = incoming_interval
        self.stats = RunnerStats()
        self.ready: Deferred = Deferred()
        self._cache_limit = cache_limit
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._seq = itertools.count()
        self._cache: dict[str, SpoolEntry] = {}
        self._routing = IMailboxRouting.providedBy(deliverer)
        self.mailboxes = MailboxQueues(config.concurrency, self._limits)
        self._keys: dict[str, Hashable] = {}
        self._interned: dict[Hashable, Hashable] = {}
        self._classify: deque = deque()
        self._classifying: set[str] = set()
        self._at_startup: set[str] = set()
        self._outage: dict[Any, set[str]] = {}
        self._tenant_pauses: dict[Any, tuple[float, str, int]] = {}
        self._in_flight: dict[str, Deferred] = {}
        self._flight_keys: dict[str, Hashable] = {}
        self._attempt_timers: dict[str, IDelayedCall] = {}
        self._after_flight: dict[str, float] = {}
        self._front_after_flight: dict[str, Hashable] = {}
        self._force_now: set[str] = set()
        self._delete_requested: set[str] = set()
        self._hold_requested: set[str] = set()
        self._timer: Optional[IDelayedCall] = None
        self._timer_at: Optional[float] = None
        self._pumping = False
        self._pump_again = False
        self._incoming_loop: Optional[LoopingCall] = None
        self._scanning = False
        self._scan_again = False
        self._recovered = False
        self._stopping = False
        self._idle_waiters: list[Deferred] = []
        self._unsubscribe: Optional[Callable[[], None]] = None

    # -- lifecycle -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if IQueueSpool.providedBy(self.spool):
            self._unsubscribe = self.spool.on_commit(self._committed)
            d = self.spool.recover_schedule().addCallback(self._recovered_schedule)
        else:
            d = self.spool.recover().addCallback(self._recovered_entries)
        d.addCallbacks(self._recovery_done, self._recovery_failed)

    def _recovered_schedule(self, schedule: list) -> None:
        # Oldest queue id first among equal times: ids sort by acceptance time.
        items = sorted(schedule, key=lambda item: (item[0], item[1]))
        for due, queue_id in items:
            if queue_id in self._due or queue_id in self._in_flight:
                continue
            self._due[queue_id] = due
            self._at_startup.add(queue_id)
            self._heap.append((due, next(self._seq), queue_id))
        heapq.heapify(self._heap)

    def _recovered_entries(self, entries: Any) -> None:
        for entry in entries:
            if entry.queue_id not in self._due and entry.queue_id not in self._in_flight:
                self._remember(entry)
                if entry.deferred_by_shared_cause:
                    self._force_now.add(entry.queue_id)
                    self._schedule(entry.queue_id, min(entry.next_attempt_at, self.clock.seconds()))
                else:
                    self._schedule(entry.queue_id, entry.next_attempt_at)

    def _recovery_done(self, _: Any) -> None:
        self._recovered = True
        self.log.info("queue runner started: {queued} queued, concurrency {concurrency}",
                      queued=len(self._due), concurrency=self.config.concurrency)
        if self.running and IQueueSpool.providedBy(self.spool):
            self._incoming_loop = LoopingCall(self._scan_incoming)
            self._incoming_loop.clock = self.clock
            self._incoming_loop.start(self.incoming_interval, now=True)
        self._pump()
        self.ready.callback(None)

    def _recovery_failed(self, failure: Failure) -> None:
        self.log.failure("spool recovery failed: the queue runner is not delivering", failure)
        self.ready.errback(failure)

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._incoming_loop is not None and self._incoming_loop.running:
            self._incoming_loop.stop()
        self._incoming_loop = None
        self._cancel_timer()
        if not self._in_flight:
            return succeed(None)
        self.log.info("waiting up to {grace}s for {count} delivery(ies) in flight",
                      grace=self.config.shutdown_grace, count=len(self._in_flight))
        done: Deferred = Deferred()
        self._idle_waiters.append(done)

        def give_up() -> None:
            if not done.called:
                self.log.warn("shutdown grace expired with {count} delivery(ies) in flight; they stay queued",
                              count=len(self._in_flight))
                for timer in self._attempt_timers.values():
                    if timer.active():
                        timer.cancel()
                self._idle_waiters.remove(done)
                done.callback(None)

        timeout = self.clock.callLater(self.config.shutdown_grace, give_up)

        def finished(result: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            return result

        return done.addBoth(finished)

    def kick(self) -> None:
        """Look at incoming/ now (sendmail drop-offs, admin requests) instead of at the next tick."""
        if self.running and self._recovered:
            self._scan_incoming()

    @property
    def queued(self) -> int:
        """Entries known to be waiting (for their time or their mailbox) or being delivered."""
        waiting = len(self._due) + len(self.mailboxes) + len(self._classify) + len(self._classifying)
        return waiting + sum(1 for q in self._in_flight if q not in self._due)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def in_flight_ids(self) -> frozenset:
        """Queue ids being delivered right now (read-only, for the status page)."""
        return frozenset(self._in_flight)

    # -- mailboxes -------------------------------------------------------------------------

    def _key_of(self, entry: SpoolEntry) -> Hashable:
        """
        The sending mailbox's key: the deliverer's routing, else the mailbox recorded at intake,
        else the envelope sender in lower case (older records), within the entry's credentials.
        """
        if self._routing:
            key = self.deliverer.mailbox_key(entry)
        else:
            key = MailboxKey(entry.provenance.credential_ref,
                             (entry.sending_mailbox or entry.envelope.sender or "").lower())
        return self._interned.setdefault(key, key)

    def _limits(self, key: Hashable) -> tuple[Optional[int], Optional[float], int]:
        if not self._routing:
            return None, None, 1
        limits = self.deliverer.mailbox_limits
        return limits.concurrency, limits.rate, limits.burst

    @staticmethod
    def _tenant_of(key: Hashable) -> Any:
        return getattr(key, "tenant", None)

    def _learn(self, entry: SpoolEntry) -> Hashable:
        key = self._key_of(entry)
        self._keys[entry.queue_id] = key
        return key

    def _forget(self, queue_id: str) -> None:
        self._keys.pop(queue_id, None)
        self._cache.pop(queue_id, None)

    # -- scheduling ------------------------------------------------------------------------

    def _remember(self, entry: SpoolEntry) -> None:
        if len(self._cache) < self._cache_limit or entry.queue_id in self._cache:
            self._cache[entry.queue_id] = entry
        self._learn(entry)

    def _committed(self, entry: SpoolEntry) -> None:
        if not self.running or self._stopping:
            return
        if entry.queue_id in self._in_flight:
            return
        self._remember(entry)
        self._schedule(entry.queue_id, entry.next_attempt_at)
        self._pump()

    def _schedule(self, queue_id: str, due: float) -> None:
        """Wait for ``due`` (leaving any mailbox queue); the timer fires when it comes."""
        self.mailboxes.discard(queue_id)
        self._due[queue_id] = due
        heapq.heappush(self._heap, (due, next(self._seq), queue_id))
        self._arm_timer()

    def _next_valid(self) -> Optional[tuple[float, int, str]]:
        while self._heap:
            top = self._heap[0]
            if self._due.get(top[2]) == top[0]:
                return top
            heapq.heappop(self._heap)
        return None

    def _pump(self) -> None:
        """
        Move due entries to their mailbox queues, start what the mailboxes can start, read the
        records of due entries whose mailbox is unknown, and arm the one timer for the next
        due time or mailbox wake-up.  Re-entrant calls (outcomes that fire synchronously) fold
        into the running one.
        """
        if not self.running or self._stopping or not self._recovered:
            return
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again and not self._stopping:
                self._pump_again = False
                now = self.clock.seconds()
                while True:
                    top = self._next_valid()
                    if top is None or top[0] > now:
                        break
                    heapq.heappop(self._heap)
                    del self._due[top[2]]
                    if top[2] in self._in_flight:
                        # Scheduled by its own attempt, which is still finishing: run it after that.
                        self._after_flight[top[2]] = top[0]
                        continue
                    self._make_ready(top[2], now)
                for key, queue_id in list(self.mailboxes.take(now)):
                    self._dispatch(queue_id, key)
                self._classify_more()
        finally:
            self._pumping = False
        self._arm_timer()

    def _make_ready(self, queue_id: str, now: float) -> None:
        key = self._keys.get(queue_id)
        if key is None:
            self._classify.append(queue_id)
        else:
            self._push(key, queue_id, now)

    def _push(self, key: Hashable, queue_id: str, now: float, front: bool = False) -> None:
        pause = self._tenant_pauses.get(self._tenant_of(key))
        if pause is not None and pause[0] > now:
            self.mailboxes.pause(key, pause[0], now)
        self.mailboxes.push(key, queue_id, now, front=front)

    def _classify_more(self) -> None:
        """Read the records of due entries not seen since start-up, a few at a time."""
        while self._classify and len(self._classifying) < CLASSIFY_CONCURRENCY and not self._stopping:
            queue_id = self._classify.popleft()
            if queue_id in self._due or queue_id in self._in_flight or queue_id in self.mailboxes:
                continue
            self._classifying.add(queue_id)
            d = self.spool.load(queue_id)
            d.addCallbacks(self._classified, self._classify_failed, callbackArgs=(queue_id,),
                           errbackArgs=(queue_id,))
            d.addErrback(lambda f: self.log.failure("queue scheduling error", f))

    def _classified(self, entry: SpoolEntry, queue_id: str) -> None:
        self._classifying.discard(queue_id)
        if self._stopping:
            return
        self._remember(entry)
        now = self.clock.seconds()
        if queue_id in self._at_startup:
            self._at_startup.discard(queue_id)
            if entry.deferred_by_shared_cause:
                # Its last failure was the next hop's, not its own: a restart makes it due now.
                self._force_now.add(queue_id)
        if queue_id not in self._force_now and entry.next_attempt_at > now + _EARLY_SLACK:
            self._schedule(queue_id, entry.next_attempt_at)
        elif queue_id not in self._due and queue_id not in self._in_flight:
            self._push(self._keys[queue_id], queue_id, now)
        self._pump()

    def _classify_failed(self, failure: Failure, queue_id: str) -> None:
        self._classifying.discard(queue_id)
        self._at_startup.discard(queue_id)
        if not failure.check(KeyError):
            self.log.failure("could not load {queue_id}; trying again later", failure, queue_id=queue_id)
            if not self._stopping:
                self._schedule(queue_id, self.clock.seconds() + self.config.retry_schedule[0])
        self._pump()

    def _arm_timer(self) -> None:
        if not self.running or self._stopping or not self._recovered:
            return
        top = self._next_valid()
        wake = self.mailboxes.next_wake()
        candidates = [t for t in (top[0] if top is not None else None, wake) if t is not None]
        if not candidates:
            self._cancel_timer()
            return
        at = min(candidates)
        if self._timer is not None and self._timer.active() and self._timer_at is not None and self._timer_at <= at:
            return
        self._cancel_timer()
        self._timer_at = at
        self._timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._timer_fired)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _timer_fired(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self._pump()
        except Exception:
            self.log.failure("queue scheduling error")

    # -- one delivery ----------------------------------------------------------------------

    def _dispatch(self, queue_id: str, key: Hashable) -> None:
        self.stats.started += 1
        self._flight_keys[queue_id] = key
        self._in_flight[queue_id] = Deferred()  # placeholder: the attempt may finish synchronously
        d = self._attempt(queue_id, key)
        self._in_flight[queue_id] = d
        d.addErrback(lambda f: self.log.failure("unexpected error handling {queue_id}", f, queue_id=queue_id))
        d.addBoth(self._finished, queue_id)

    def _release_slot(self, queue_id: str) -> None:
        key = self._flight_keys.pop(queue_id, None)
        if key is not None:
            self.mailboxes.release(key, self.clock.seconds())

    def _finished(self, _: Any, queue_id: str) -> None:
        self._in_flight.pop(queue_id, None)
        self._release_slot(queue_id)
        if queue_id in self._hold_requested:
            self._after_flight.pop(queue_id, None)
            self._front_after_flight.pop(queue_id, None)
            self._hold_now(queue_id)
        now = self.clock.seconds()
        front = self._front_after_flight.pop(queue_id, None)
        if front is not None and queue_id not in self._due and not self._stopping:
            self._push(front, queue_id, now, front=True)
        due = self._after_flight.pop(queue_id, None)
        if due is not None and queue_id not in self._due and not self._stopping:
            self._schedule(queue_id, due)
        if not self._in_flight and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self._pump()

    @inlineCallbacks
    def _attempt(self, queue_id: str, key: Hashable) -> Any:
        forced = queue_id in self._force_now
        self._force_now.discard(queue_id)
        outage = self._outage.get(self._tenant_of(key))
        if outage is not None:
            outage.discard(queue_id)
        entry = self._cache.pop(queue_id, None)
        if entry is None:
            try:
                entry = yield self.spool.load(queue_id)
            except KeyError:
                self._forget(queue_id)
                return  # deleted, delivered elsewhere, or quarantined (the spool logged it)
            except Exception:
                self.log.failure("could not load {queue_id}; trying again later", queue_id=queue_id)
                self._schedule(queue_id, self.clock.seconds() + self.config.retry_schedule[0])
                return
        if queue_id in self._delete_requested:
            yield self._delete_now(queue_id)
            return
        if not forced and entry.next_attempt_at > self.clock.seconds() + _EARLY_SLACK:
            self._remember(entry)
            self._schedule(queue_id, entry.next_attempt_at)
            return
        attempt = maybeDeferred(self.deliverer.deliver, entry)
        # A safety net, not the deliverer's own timeouts: a hung attempt must not hold a
        # delivery slot (and the message) forever.  It may have reached the next hop.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            attempt.cancel()

        self._attempt_timers[queue_id] = self.clock.callLater(self.config.attempt_timeout, expire)
        try:
            outcome = yield attempt
        except Exception:
            if expired:
                self.stats.deliverer_errors += 1
                self.log.error("delivery attempt for {queue_id} still unfinished after {timeout}s; cancelled",
                               queue_id=queue_id, timeout=self.config.attempt_timeout)
                outcome = Transient(reason=f"delivery attempt timed out after {_duration(self.config.attempt_timeout)}",
                                    possibly_delivered=True)
            else:
                outcome = self._deliverer_raised(queue_id, Failure())
        finally:
            timer = self._attempt_timers.pop(queue_id, None)
            if timer is not None and timer.active():
                timer.cancel()
        if not isinstance(outcome, (Delivered, Transient, Permanent)):
            self.stats.deliverer_errors += 1
            self.log.error("deliverer returned {outcome!r} for {queue_id}; treating as transient",
                           outcome=outcome, queue_id=queue_id)
            outcome = Transient(reason="internal error: deliverer returned no outcome")
        # The next hop is done with it: the mailbox's slot frees now (after any pause it asked
        # for), not after the spool bookkeeping below (a record rewrite is an fsync).
        self._release_slot(queue_id)
        if isinstance(outcome, Transient):
            self._apply_pause(key, outcome, self.clock.seconds())
        elif isinstance(outcome, Delivered):
            self._recovered_tenant(key)
        self._pump()
        if queue_id in self._delete_requested:
            yield self._delete_now(queue_id)
            return
        if isinstance(outcome, Delivered):
            self._forget(queue_id)
            yield self._delivered(entry, outcome, key)
        elif isinstance(outcome, Permanent):
            reason = f"{outcome.status} {outcome.reason}" + (f" ({outcome.remote_code})" if outcome.remote_code else "")
            # The refused attempt counts: a message failed on its first try shows 1 attempt.
            history = (entry.history + (AttemptRecord(at=self.clock.seconds(), reason=reason),))[-HISTORY_LIMIT:]
            yield self._failed(attrs.evolve(entry, attempts=entry.attempts + 1, history=history), outcome, reason, key)
        else:
            yield self._transient(entry, outcome, key)

    # -- outcomes --------------------------------------------------------------------------

    def _fields(self, entry: SpoolEntry, key: Hashable, status: str, attempt: int, reason: str) -> dict:
        """The structured fields of a state-change line (rendered Postfix-style or as JSON)."""
        return {
            "queue_id": entry.queue_id,
            "from": entry.envelope.sender,
            "to": list(entry.envelope.recipients),
            "size": entry.size,
            "relay": getattr(self.deliverer, "relay", "graph"),  # "capture": the local outbox, not Graph
            "mailbox": getattr(key, "mailbox", None) or entry.sending_mailbox or entry.envelope.sender,
            "delay": round(max(0.0, self.clock.seconds() - entry.received_at), 3),
            "status": status,
            "attempt": attempt,
            "reason": reason,
        }

    @inlineCallbacks
    def _delivered(self, entry: SpoolEntry, outcome: Delivered, key: Hashable = None) -> Any:
        self.stats.delivered += 1
        self.log.info("delivered {queue_id}", detail=outcome.detail,
                      **self._fields(entry, key, "sent", entry.attempts + 1, outcome.detail))
        try:
            yield self.spool.remove(entry)
        except Exception as e:
            # Left queued on disk: after a restart it may be delivered again (never lost).
            if not isinstance(e, SpoolError):  # disk trouble: the spool logs it once per condition
                self.log.failure("could not remove delivered {queue_id} from the spool", queue_id=entry.queue_id)
        self._notify("delivered", entry, outcome)

    @inlineCallbacks
    def _failed(self, entry: SpoolEntry, outcome: Permanent, reason: str, key: Hashable = None) -> Any:
        try:
            failed_entry = yield self.spool.fail(entry, reason)
        except Exception as e:
            if not isinstance(e, SpoolError):  # disk trouble: the spool logs it once per condition
                self.log.failure("could not move {queue_id} to failed/; it stays queued", queue_id=entry.queue_id)
            self._schedule(entry.queue_id, self.clock.seconds() + self.config.retry_schedule[-1])
            return
        self._forget(entry.queue_id)
        self.stats.failed += 1
        self.log.warn("failed {queue_id}: {reason}",
                      **self._fields(entry, key, "bounced", max(entry.attempts, 1), reason))
        self._notify("failed", failed_entry if isinstance(failed_entry, SpoolEntry) else entry, outcome)

    def _apply_pause(self, key: Hashable, outcome: Transient, now: float) -> None:
        """Honour a deliverer's "start nothing for this mailbox (or tenant) before T"."""
        until = outcome.pause_until
        if until is None or until <= now:
            return
        if outcome.pause_scope != "tenant":
            self.mailboxes.pause(key, until, now)
            return
        tenant = self._tenant_of(key)
        previous = self._tenant_pauses.get(tenant)
        if previous is not None and previous[0] > now:
            # The same condition again (deliveries already under way when it began): once.
            self._tenant_pauses[tenant] = (max(previous[0], until), previous[1], previous[2] + 1)
        else:
            self._tenant_pauses[tenant] = (until, outcome.reason, 1)
            # The deliverer raises the alarm (once per condition); this is the runner's echo.
            self.log.debug("deliveries for tenant {tenant} held for {seconds}s: {reason}",
                          tenant=tenant or "default", seconds=round(until - now), reason=outcome.reason)
        for mq in self.mailboxes.queues():
            if self._tenant_of(mq.key) == tenant:
                self.mailboxes.pause(mq.key, until, now)

    def _recovered_tenant(self, key: Hashable) -> None:
        """A delivery succeeded: the tenant's shared trouble is over; what it held back is due."""
        tenant = self._tenant_of(key)
        pause = self._tenant_pauses.pop(tenant, None)
        if pause is not None and pause[2] > 1:
            self.log.info("deliveries for tenant {tenant} resumed ({count} reports of: {reason})",
                          tenant=tenant or "default", count=pause[2], reason=pause[1])
        held = self._outage.pop(tenant, None)
        if not held:
            return
        now = self.clock.seconds()
        released = 0
        for queue_id in held:
            if queue_id in self._due and self._due[queue_id] > now:
                self._force_now.add(queue_id)
                self._schedule(queue_id, now)
                released += 1
        if released:
            self.stats.released_after_outage += released
            self.log.info("tenant {tenant} is reachable again: {count} message(s) deferred by the outage are due "
                          "now, at their mailboxes' pace", tenant=tenant or "default", count=released)

    @inlineCallbacks
    def _transient(self, entry: SpoolEntry, outcome: Transient, key: Hashable = None) -> Any:
        now = self.clock.seconds()
        expires_at = entry.received_at + self.config.max_lifetime
        if not outcome.attempted and now < expires_at:
            # Scheduling, not failure: nothing was sent, so no attempt, no spool write, no
            # observer; after a crash the old next-attempt time simply makes it due sooner.
            next_at = outcome.retry_at if outcome.retry_at is not None else (
                outcome.pause_until if outcome.pause_until is not None else now + self.config.retry_schedule[0])
            if not self._stopping:
                self._remember(entry)
                self._requeue(entry.queue_id, key, max(next_at, now), now)
            return
        attempts = entry.attempts + 1
        record = AttemptRecord(at=now, reason=outcome.reason, cause=outcome.cause)
        history = (entry.history + (record,))[-HISTORY_LIMIT:]
        if outcome.possibly_delivered:
            self.stats.possibly_delivered += 1
            self.log.warn("possibly delivered {queue_id} (attempt {attempt}): the next hop may have it; "
                          "a retry may duplicate it", queue_id=entry.queue_id, attempt=attempts)
        if now >= expires_at:
            expired = attrs.evolve(entry, attempts=attempts, history=history)
            reason = f"queue lifetime of {_duration(self.config.max_lifetime)} expired; last error: {outcome.reason}"
            yield self._failed(expired, Permanent(reason=reason, status=EXPIRED_STATUS), reason, key)
            return
        if outcome.retry_at is not None:
            next_at = max(outcome.retry_at, now)
        elif outcome.cause in WAIT_CAUSES:
            # A wait, not a failure: back when the pause ends, without a backoff step.
            next_at = max(outcome.pause_until or now + self.config.retry_schedule[0], now)
        else:
            failures = sum(1 for h in history if h.counts_as_failure)
            delay = retry_delay(failures, self.config.retry_schedule, self.config.jitter, self.random)
            # The last try happens when the lifetime ends, not a whole backoff step later.
            next_at = min(now + delay, expires_at)
        deferred_entry = attrs.evolve(entry, attempts=attempts, next_attempt_at=next_at, history=history)
        try:
            yield self.spool.update(deferred_entry)
        except KeyError:
            self._forget(entry.queue_id)
            return  # removed while we were delivering
        except Exception as e:
            if not isinstance(e, SpoolError):  # disk trouble: the spool logs it once per condition
                self.log.failure("could not record the failed attempt of {queue_id}", queue_id=entry.queue_id)
        self.stats.deferred += 1
        self.log.info("deferred {queue_id} attempt {attempt} retry in {retry_in}s: {reason}",
                      retry_in=round(next_at - now), **self._fields(entry, key, "deferred", attempts, outcome.reason))
        if not self._stopping:
            if outcome.cause in SHARED_CAUSES:
                self._outage.setdefault(self._tenant_of(key), set()).add(entry.queue_id)
            self._remember(deferred_entry)
            self._requeue(entry.queue_id, key, next_at, now)
        self._notify("deferred", deferred_entry, outcome)

    def _requeue(self, queue_id: str, key: Hashable, next_at: float, now: float) -> None:
        """
        Back in line: at the head of its mailbox queue when all it waits for is the mailbox's
        pause (no timer of its own), else in the time heap.
        """
        if key is not None and next_at <= max(self.mailboxes.paused_until(key), now):
            if queue_id in self._in_flight:
                self._front_after_flight[queue_id] = key
            else:
                self._push(key, queue_id, now, front=True)
        else:
            self._schedule(queue_id, next_at)

    def _deliverer_raised(self, queue_id: str, failure: Failure) -> Transient:
        self.stats.deliverer_errors += 1
        self.log.failure("deliverer raised for {queue_id}; treating as transient", failure, queue_id=queue_id)
        return Transient(reason=f"internal error in deliverer: {failure.type.__name__}")

    def _notify(self, method: str, entry: SpoolEntry, outcome: Any) -> None:
        for observer in self.observers:
            d = maybeDeferred(getattr(observer, method), entry, outcome)
            d.addErrback(lambda f, o=observer: self.log.failure(
                "delivery observer {observer!r} failed on {event} for {queue_id}", f,
                observer=o, event=method, queue_id=entry.queue_id))

    # -- incoming and admin requests -------------------------------------------------------

    def _scan_incoming(self) -> Deferred:
        """Never fails (a failing LoopingCall would stop for good)."""
        if self._scanning:
            # Something may have landed after the running scan listed the directory: look
            # again as soon as it finishes rather than at the next tick.
            self._scan_again = True
            return succeed(None)
        self._scanning = True
        self._scan_again = False
        d = maybeDeferred(self.spool.scan_incoming)
        d.addCallback(self._incoming_found)
        d.addErrback(lambda f: self.log.failure("scanning the spool's incoming directory failed", f))

        def done(_: Any) -> Any:
            self._scanning = False
            if self._scan_again and self.running and not self._stopping:
                return self._scan_incoming()
            return None
        return d.addBoth(done)

    @inlineCallbacks
    def _incoming_found(self, scan: Any) -> Any:
        for entry in scan.entries:
            self._committed(entry)
        for request in scan.requests:
            try:
                yield self._apply_request(request.action, request.target)
            except Exception:
                self.log.failure("admin request {action} {target} failed", action=request.action, target=request.target)

    @inlineCallbacks
    def _apply_request(self, action: str, target: str) -> Any:
        now = self.clock.seconds()
        if action == "retry":
            targets = list(self._due) if target == "all" else [target]
            self.log.info("retry of {target} requested by admin", target=target)
            for queue_id in targets:
                if queue_id in self._in_flight:
                    continue
                self._force_now.add(queue_id)
                self._schedule(queue_id, now)
        elif action == "delete":
            if target in self._in_flight:
                self._delete_requested.add(target)
            else:
                yield self._delete_now(target)
        elif action == "requeue":
            entry = yield self.spool.requeue(target)
            self.log.info("requeued {queue_id} from failed/ by admin request", queue_id=target)
            self._committed(entry)
        elif action == "hold":
            targets = ([*self._due, *self.mailboxes.ids(), *self._in_flight] if target == "all" else [target])
            for queue_id in targets:
                if queue_id in self._in_flight:
                    self._hold_requested.add(queue_id)  # held once its attempt is recorded
                else:
                    yield self._hold_now(queue_id)
        elif action == "release":
            targets = (list((yield self.spool.held_ids())) + sorted(self._hold_requested)
                       if target == "all" else [target])
            for queue_id in targets:
                if queue_id in self._hold_requested:
                    self._hold_requested.discard(queue_id)  # released before its hold took effect
                    continue
                try:
                    entry = yield self.spool.release(queue_id)
                except KeyError:
                    continue
                self.log.info("released {queue_id} from hold by admin request", queue_id=queue_id)
                self._committed(entry)
        self._pump()

    def _hold_now(self, queue_id: str) -> Deferred:
        """
        Out of the schedule at once (so nothing dispatches it meanwhile), then out of queue/:
        a held entry is invisible to the runner, so it is never attempted and never expires.
        """
        self._hold_requested.discard(queue_id)
        self._force_now.discard(queue_id)
        self._due.pop(queue_id, None)
        self.mailboxes.discard(queue_id)
        self._forget(queue_id)
        d = self.spool.hold(queue_id)
        d.addCallback(lambda _: self.log.info("held {queue_id} by admin request", queue_id=queue_id))
        d.addErrback(lambda f: None if f.check(KeyError) else self.log.failure(
            "could not hold {queue_id}", f, queue_id=queue_id))
        return d

    @inlineCallbacks
    def _delete_now(self, queue_id: str) -> Any:
        self._delete_requested.discard(queue_id)
        self._due.pop(queue_id, None)
        self.mailboxes.discard(queue_id)
        self._forget(queue_id)
        existed = yield self.spool.delete(queue_id)
        if existed:
            self.log.info("deleted {queue_id} by admin request", queue_id=queue_id)


__all__ = ["QueueRunner", "RunnerStats", "HISTORY_LIMIT"]
