"""
Work that reaches the queue runner through the spool's incoming/ directory: messages dropped
off by other processes (the sendmail command) and admin requests (``graphsmtp-queue``
retry / delete / requeue / hold / release while the daemon runs).

L{AdminRequests} is a mixin of L{gateway.queue.runner.QueueRunner}, split off so each module
keeps one job; it needs the spool's queue extras (L{IQueueSpool}), which the runner only scans
for when the spool provides them.  The runner state it uses is declared below.
"""

from __future__ import annotations

from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.queue.mailboxes import MailboxQueues
from gateway.spool.entry import SpoolEntry
from gateway.spool.interfaces import IQueueSpool, ISpool


class AdminRequests:
    """The queue runner's incoming side (a mixin of L{gateway.queue.runner.QueueRunner})."""

    # Runner state this side reads and changes.
    log: Logger
    spool: ISpool  # an IQueueSpool whenever incoming/ is scanned
    clock: IReactorTime
    running: Any
    mailboxes: MailboxQueues
    _stopping: bool
    _scanning: bool
    _scan_again: bool
    _due: dict[str, float]
    _in_flight: dict[str, Deferred]
    _force_now: set[str]
    _delete_requested: set[str]
    _hold_requested: set[str]

    def _schedule(self, queue_id: str, due: float) -> None:
        raise NotImplementedError

    def _committed(self, entry: SpoolEntry) -> None:
        raise NotImplementedError

    def _forget(self, queue_id: str) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    @property
    def _queue_spool(self) -> IQueueSpool:
        """The spool as the queue spool it is whenever this side runs (no adaptation at run time)."""
        return cast(IQueueSpool, self.spool)

    def _scan_incoming(self) -> Deferred:
        """Never fails (a failing LoopingCall would stop for good)."""
        if self._scanning:
            # Something may have landed after the running scan listed the directory: look
            # again as soon as it finishes rather than at the next tick.
            self._scan_again = True
            return succeed(None)
        self._scanning = True
        self._scan_again = False
        d = maybeDeferred(self._queue_spool.scan_incoming)
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
        handlers: dict[str, Callable[[str], Any]] = {
            "retry": self._request_retry, "delete": self._request_delete, "requeue": self._request_requeue,
            "hold": self._request_hold, "release": self._request_release,
        }
        handler = handlers.get(action)
        if handler is not None:
            yield handler(target)
        self._pump()

    def _request_retry(self, target: str) -> None:
        now = self.clock.seconds()
        targets = list(self._due) if target == "all" else [target]
        self.log.info("retry of {target} requested by admin", target=target)
        for queue_id in targets:
            if queue_id in self._in_flight:
                continue
            self._force_now.add(queue_id)
            self._schedule(queue_id, now)

    def _request_delete(self, target: str) -> Any:
        if target in self._in_flight:
            self._delete_requested.add(target)
            return None
        return self._delete_now(target)

    @inlineCallbacks
    def _request_requeue(self, target: str) -> Any:
        entry = yield self._queue_spool.requeue(target)
        self.log.info("requeued {queue_id} from failed/ by admin request", queue_id=target)
        self._committed(entry)

    @inlineCallbacks
    def _request_hold(self, target: str) -> Any:
        targets = [*self._due, *self.mailboxes.ids(), *self._in_flight] if target == "all" else [target]
        for queue_id in targets:
            if queue_id in self._in_flight:
                self._hold_requested.add(queue_id)  # held once its attempt is recorded
            else:
                yield self._hold_now(queue_id)

    @inlineCallbacks
    def _request_release(self, target: str) -> Any:
        if target == "all":
            targets = list((yield self._queue_spool.held_ids())) + sorted(self._hold_requested)
        else:
            targets = [target]
        for queue_id in targets:
            if queue_id in self._hold_requested:
                self._hold_requested.discard(queue_id)  # released before its hold took effect
                continue
            try:
                entry = yield self._queue_spool.release(queue_id)
            except KeyError:
                continue
            self.log.info("released {queue_id} from hold by admin request", queue_id=queue_id)
            self._committed(entry)

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
        d = self._queue_spool.hold(queue_id)
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
        existed = yield self._queue_spool.delete(queue_id)
        if existed:
            self.log.info("deleted {queue_id} by admin request", queue_id=queue_id)


__all__ = ["AdminRequests"]
