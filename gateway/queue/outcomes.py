"""
What the queue runner does with an outcome: remove a delivered entry, move a refused one to
failed/, record a failed attempt and work out when to try again, pause a mailbox or a tenant,
release what a tenant's outage held back, tell the observers.

The decisions are plain functions of the entry, the outcome and the time (L{plan_retry},
L{unattempted_retry_at}, L{permanent_reason}); L{OutcomeHandling} applies them to the spool and
to the runner's schedule.  It is a mixin of L{gateway.queue.runner.QueueRunner}, split off so
each module keeps one job; the runner state it uses is declared below.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config.model import QueueConfig
from gateway.delivery.interfaces import (
    SHARED_CAUSES,
    WAIT_CAUSES,
    Delivered,
    IDeliverer,
    IDeliveryObserver,
    Permanent,
    Transient,
)
from gateway.queue.backoff import retry_delay
from gateway.queue.mailboxes import MailboxQueues
from gateway.spool.entry import AttemptRecord, SpoolEntry
from gateway.spool.interfaces import ISpool, SpoolError

HISTORY_LIMIT = 50
EXPIRED_STATUS = "4.4.7"


def duration_text(seconds: float) -> str:
    """``5d``, ``2h``, ``90s``: a whole unit when it divides evenly, for log lines and reasons."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def permanent_reason(outcome: Permanent) -> str:
    """The failure record's reason: status, text and the next hop's own code."""
    return f"{outcome.status} {outcome.reason}" + (f" ({outcome.remote_code})" if outcome.remote_code else "")


def with_attempt(entry: SpoolEntry, record: AttemptRecord) -> SpoolEntry:
    """``entry`` with one more attempt, ``record`` appended to its (bounded) history."""
    return attrs.evolve(entry, attempts=entry.attempts + 1, history=(entry.history + (record,))[-HISTORY_LIMIT:])


def unattempted_retry_at(outcome: Transient, now: float, config: QueueConfig) -> float:
    """When to hand over again an entry the deliverer did not even try (pacing, a pause)."""
    if outcome.retry_at is not None:
        next_at = outcome.retry_at
    elif outcome.pause_until is not None:
        next_at = outcome.pause_until
    else:
        next_at = now + config.retry_schedule[0]
    return max(next_at, now)


@attrs.frozen
class RetryPlan:
    """
    What a failed attempt leads to: ``entry`` (attempts and history advanced, next attempt at
    ``next_at``), or ``expired_reason`` when the queue lifetime is over.
    """

    entry: SpoolEntry
    next_at: float
    expired_reason: Optional[str] = None


def plan_retry(entry: SpoolEntry, outcome: Transient, now: float, config: QueueConfig,
               random: Callable[[], float]) -> RetryPlan:
    """
    The next attempt after a transient failure.  Backoff counts failures, not waits: a honoured
    429 or a tenant pause comes back when it ends without a backoff step; the last try happens
    when the lifetime ends, not a whole backoff step later.
    """
    tried = with_attempt(entry, AttemptRecord(at=now, reason=outcome.reason, cause=outcome.cause))
    expires_at = entry.received_at + config.max_lifetime
    if now >= expires_at:
        reason = f"queue lifetime of {duration_text(config.max_lifetime)} expired; last error: {outcome.reason}"
        return RetryPlan(tried, now, reason)
    if outcome.retry_at is not None:
        next_at = max(outcome.retry_at, now)
    elif outcome.cause in WAIT_CAUSES:
        next_at = max(outcome.pause_until or now + config.retry_schedule[0], now)
    else:
        failures = sum(1 for h in tried.history if h.counts_as_failure)
        next_at = min(now + retry_delay(failures, config.retry_schedule, config.jitter, random), expires_at)
    return RetryPlan(attrs.evolve(tried, next_attempt_at=next_at), next_at)


class OutcomeHandling:
    """The queue runner's outcome side (a mixin of L{gateway.queue.runner.QueueRunner})."""

    # Runner state this side reads and changes.
    log: Logger
    spool: ISpool
    deliverer: IDeliverer
    config: QueueConfig
    clock: IReactorTime
    observers: tuple[IDeliveryObserver, ...]
    random: Callable[[], float]
    stats: Any
    mailboxes: MailboxQueues
    _stopping: bool
    _due: dict[str, float]
    _in_flight: dict[str, Deferred]
    _force_now: set[str]
    _outage: dict[Any, set[str]]
    _tenant_pauses: dict[Any, tuple[float, str, int]]
    _front_after_flight: dict[str, Hashable]

    def _schedule(self, queue_id: str, due: float) -> None:
        raise NotImplementedError

    def _push(self, key: Hashable, queue_id: str, now: float, front: bool = False) -> None:
        raise NotImplementedError

    def _remember(self, entry: SpoolEntry) -> None:
        raise NotImplementedError

    def _forget(self, queue_id: str) -> None:
        raise NotImplementedError

    @staticmethod
    def _tenant_of(key: Hashable) -> Any:
        return getattr(key, "tenant", None)

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

    def _refused(self, entry: SpoolEntry, outcome: Permanent, key: Hashable) -> Deferred:
        reason = permanent_reason(outcome)
        # The refused attempt counts: a message failed on its first try shows 1 attempt.
        return self._failed(with_attempt(entry, AttemptRecord(at=self.clock.seconds(), reason=reason)),
                            outcome, reason, key)

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
        if not outcome.attempted and now < entry.received_at + self.config.max_lifetime:
            # Scheduling, not failure: nothing was sent, so no attempt, no spool write, no
            # observer; after a crash the old next-attempt time simply makes it due sooner.
            if not self._stopping:
                self._remember(entry)
                self._requeue(entry.queue_id, key, unattempted_retry_at(outcome, now, self.config), now)
            return
        plan = plan_retry(entry, outcome, now, self.config, self.random)
        if outcome.possibly_delivered:
            self.stats.possibly_delivered += 1
            self.log.warn("possibly delivered {queue_id} (attempt {attempt}): the next hop may have it; "
                          "a retry may duplicate it", queue_id=entry.queue_id, attempt=plan.entry.attempts)
        if plan.expired_reason is not None:
            yield self._failed(plan.entry, Permanent(reason=plan.expired_reason, status=EXPIRED_STATUS),
                               plan.expired_reason, key)
            return
        recorded = yield self._record_deferral(plan.entry)
        if recorded:
            self._deferred(entry, outcome, plan, key, now)

    @inlineCallbacks
    def _record_deferral(self, deferred_entry: SpoolEntry) -> Any:
        """Write the failed attempt into the record; False if the entry is gone meanwhile."""
        try:
            yield self.spool.update(deferred_entry)
        except KeyError:
            self._forget(deferred_entry.queue_id)
            return False  # removed while we were delivering
        except Exception as e:
            if not isinstance(e, SpoolError):  # disk trouble: the spool logs it once per condition
                self.log.failure("could not record the failed attempt of {queue_id}", queue_id=deferred_entry.queue_id)
        return True

    def _deferred(self, entry: SpoolEntry, outcome: Transient, plan: RetryPlan, key: Hashable, now: float) -> None:
        self.stats.deferred += 1
        self.log.info("deferred {queue_id} attempt {attempt} retry in {retry_in}s: {reason}",
                      retry_in=round(plan.next_at - now),
                      **self._fields(entry, key, "deferred", plan.entry.attempts, outcome.reason))
        if not self._stopping:
            if outcome.cause in SHARED_CAUSES:
                self._outage.setdefault(self._tenant_of(key), set()).add(entry.queue_id)
            self._remember(plan.entry)
            self._requeue(entry.queue_id, key, plan.next_at, now)
        self._notify("deferred", plan.entry, outcome)

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

    def _notify(self, method: str, entry: SpoolEntry, outcome: Any) -> None:
        for observer in self.observers:
            d = maybeDeferred(getattr(observer, method), entry, outcome)
            d.addErrback(self._observer_failed, observer, method, entry.queue_id)

    def _observer_failed(self, failure: Failure, observer: IDeliveryObserver, method: str, queue_id: str) -> None:
        self.log.failure("delivery observer {observer!r} failed on {event} for {queue_id}", failure,
                         observer=observer, event=method, queue_id=queue_id)


__all__ = ["HISTORY_LIMIT", "EXPIRED_STATUS", "OutcomeHandling", "RetryPlan", "plan_retry", "unattempted_retry_at",
           "permanent_reason", "duration_text"]
