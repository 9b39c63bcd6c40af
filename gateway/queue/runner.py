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

This module holds the schedule and one delivery attempt; what an outcome does to the spool is
L{gateway.queue.outcomes}, and work arriving through incoming/ is L{gateway.queue.requests}
(both mixins of L{QueueRunner}).  The runner knows the spool as L{ISpool} / L{IQueueSpool} and
the deliverer as L{IDeliverer} (with L{IMailboxRouting} when it offers it), never their
implementations.
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
    Delivered,
    IDeliverer,
    IDeliveryObserver,
    IMailboxRouting,
    MailboxKey,
    Permanent,
    Transient,
)
from gateway.queue.mailboxes import MailboxQueues
from gateway.queue.outcomes import HISTORY_LIMIT, OutcomeHandling, duration_text
from gateway.queue.requests import AdminRequests
from gateway.spool.entry import SpoolEntry
from gateway.spool.interfaces import IQueueSpool, ISpool

# A loaded record whose real next attempt is later than its schedule hint by more than this
# is put back to wait; smaller differences are clock noise.
_EARLY_SLACK = 1.0
#: Records read at once to learn the mailbox of due entries the runner has not seen yet.
CLASSIFY_CONCURRENCY = 4


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


class QueueRunner(AdminRequests, OutcomeHandling, Service):
    #: The namespace of the runner's lines since before it left gateway.spool (operators filter
    #: on it).  Set per instance: a Logger class attribute is renamed after the class by
    #: Twisted's descriptor, so the move between packages would rename every line.
    LOG_NAMESPACE = "gateway.spool.runner.QueueRunner"

    def __init__(self, spool: ISpool, deliverer: IDeliverer, config: QueueConfig, clock: IReactorTime,
                 observers: Sequence[IDeliveryObserver] = (), random: Callable[[], float] = _random.random,
                 incoming_interval: float = 5.0, cache_limit: int = 10000) -> None:
        self.log = Logger(namespace=self.LOG_NAMESPACE, source=self)
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
        self._routing: Optional[IMailboxRouting] = IMailboxRouting(deliverer, None)
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
        if self._routing is not None:
            key = self._routing.mailbox_key(entry)
        else:
            key = MailboxKey(entry.provenance.credential_ref,
                             (entry.sending_mailbox or entry.envelope.sender or "").lower())
        return self._interned.setdefault(key, key)

    def _limits(self, key: Hashable) -> tuple[Optional[int], Optional[float], int]:
        if self._routing is None:
            return None, None, 1
        limits = self._routing.mailbox_limits
        return limits.concurrency, limits.rate, limits.burst

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
        entry = yield self._entry_to_attempt(queue_id, forced)
        if entry is None:
            return
        outcome = yield self._run_deliverer(queue_id, entry)
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
        elif isinstance(outcome, Delivered):
            self._forget(queue_id)
            yield self._delivered(entry, outcome, key)
        elif isinstance(outcome, Permanent):
            yield self._refused(entry, outcome, key)
        else:
            yield self._transient(entry, outcome, key)

    @inlineCallbacks
    def _entry_to_attempt(self, queue_id: str, forced: bool) -> Any:
        """
        The entry to hand over now, or None when there is nothing to attempt: it is gone, could
        not be read (tried again later), was deleted by an admin meanwhile, or is not due yet.
        """
        entry = self._cache.pop(queue_id, None)
        if entry is None:
            try:
                entry = yield self.spool.load(queue_id)
            except KeyError:
                self._forget(queue_id)
                return None  # deleted, delivered elsewhere, or quarantined (the spool logged it)
            except Exception:
                self.log.failure("could not load {queue_id}; trying again later", queue_id=queue_id)
                self._schedule(queue_id, self.clock.seconds() + self.config.retry_schedule[0])
                return None
        if queue_id in self._delete_requested:
            yield self._delete_now(queue_id)
            return None
        if not forced and entry.next_attempt_at > self.clock.seconds() + _EARLY_SLACK:
            self._remember(entry)
            self._schedule(queue_id, entry.next_attempt_at)
            return None
        return entry

    @inlineCallbacks
    def _run_deliverer(self, queue_id: str, entry: SpoolEntry) -> Any:
        """
        The deliverer's outcome for ``entry``, always one of Delivered, Transient or Permanent:
        an exception, a hung attempt or a wrong value becomes a Transient.
        """
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
            outcome = self._timed_out(queue_id) if expired else self._deliverer_raised(queue_id, Failure())
        finally:
            timer = self._attempt_timers.pop(queue_id, None)
            if timer is not None and timer.active():
                timer.cancel()
        if not isinstance(outcome, (Delivered, Transient, Permanent)):
            self.stats.deliverer_errors += 1
            self.log.error("deliverer returned {outcome!r} for {queue_id}; treating as transient",
                           outcome=outcome, queue_id=queue_id)
            outcome = Transient(reason="internal error: deliverer returned no outcome")
        return outcome

    def _timed_out(self, queue_id: str) -> Transient:
        self.stats.deliverer_errors += 1
        self.log.error("delivery attempt for {queue_id} still unfinished after {timeout}s; cancelled",
                       queue_id=queue_id, timeout=self.config.attempt_timeout)
        return Transient(reason=f"delivery attempt timed out after {duration_text(self.config.attempt_timeout)}",
                         possibly_delivered=True)

    def _deliverer_raised(self, queue_id: str, failure: Failure) -> Transient:
        self.stats.deliverer_errors += 1
        self.log.failure("deliverer raised for {queue_id}; treating as transient", failure, queue_id=queue_id)
        return Transient(reason=f"internal error in deliverer: {failure.type.__name__}")


__all__ = ["QueueRunner", "RunnerStats", "HISTORY_LIMIT"]
