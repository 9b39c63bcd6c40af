"""
Doubles for the delivery side, public so plugin authors (observers, deliverers) and the
gateway's own tests share one copy of each:

- L{ScriptedDeliverer}: an L{IDeliverer} answering with the outcomes a test queues.
- L{RecordingObserver}: an L{IDeliveryObserver} remembering every outcome, with waiters so a
  test can wait for deliveries instead of sleeping.
- L{FakeTokenSource}: plays the Graph deliverer's token source (C{acquire}/C{evict}, as
  L{gateway.delivery.graph.token.TokenProviders}) with answers the test decides.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from gateway.delivery.graph.token import AccessToken, TokenError
from gateway.delivery.interfaces import Delivered, IDeliverer, IDeliveryObserver, Outcome
from gateway.spool.entry import SpoolEntry

#: Queue this in L{ScriptedDeliverer} (or L{FakeTokenSource}) for an answer the test fires later.
WAIT = "wait"

Event = tuple[str, Any, Any]


@implementer(IDeliverer)
class ScriptedDeliverer:
    """
    Answers with the queued ``outcomes`` in order (an outcome, an exception to fail with, or
    L{WAIT} for an unfired Deferred kept in ``pending``); then with ``default``.
    """

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes: list[Any] = list(outcomes)
        self.calls: list[SpoolEntry] = []
        self.pending: list[Deferred] = []
        self.default: Outcome = Delivered()

    def deliver(self, entry: SpoolEntry) -> Deferred:
        self.calls.append(entry)
        outcome = self.outcomes.pop(0) if self.outcomes else self.default
        if outcome == WAIT:
            d: Deferred = Deferred()
            self.pending.append(d)
            return d
        if isinstance(outcome, Exception):
            return fail(outcome)
        return succeed(outcome)


@implementer(IDeliveryObserver)
@attrs.define(eq=False)
class RecordingObserver:
    """
    Remembers every outcome the queue runner applied — after the spool reflects it — so a
    test can wait for deliveries instead of sleeping.  ``events`` holds
    ``(kind, entry, outcome)`` with kind ``"delivered"``, ``"deferred"`` or ``"failed"``.
    ``explode`` makes every call raise after recording (an observer with a bug).
    """

    events: list[Event] = attrs.field(factory=list)
    explode: bool = False
    _waiters: list[tuple[int, tuple[str, ...], Deferred]] = attrs.field(factory=list)
    #: Called with each ``(kind, entry, outcome)`` as it happens (timeouts restart on progress).
    listeners: list[Callable[[Event], None]] = attrs.field(factory=list)

    def delivered(self, entry: Any, outcome: Any) -> None:
        self._record("delivered", entry, outcome)

    def deferred(self, entry: Any, outcome: Any) -> None:
        self._record("deferred", entry, outcome)

    def failed(self, entry: Any, outcome: Any) -> None:
        self._record("failed", entry, outcome)

    @property
    def summary(self) -> list[Event]:
        """``events`` with each entry replaced by its queue id (easy to compare)."""
        return [(kind, entry.queue_id, outcome) for kind, entry, outcome in self.events]

    def wait_for(self, count: int, kinds: Iterable[str] = ("delivered", "deferred", "failed")) -> Deferred:
        """Fires with the first ``count`` events of the given kinds, once there are that many."""
        d: Deferred = Deferred()
        self._waiters.append((count, tuple(kinds), d))
        self._wake()
        return d

    def cancel(self, d: Deferred) -> None:
        """Forget a waiter of L{wait_for} (its timeout expired)."""
        self._waiters[:] = [w for w in self._waiters if w[2] is not d]

    def _record(self, kind: str, entry: Any, outcome: Any) -> None:
        self.events.append((kind, entry, outcome))
        for listener in list(self.listeners):
            listener((kind, entry, outcome))
        self._wake()
        if self.explode:
            raise RuntimeError("observer bug")

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            count, kinds, d = waiter
            matching = [e for e in self.events if e[0] in kinds]
            if len(matching) >= count:
                self._waiters.remove(waiter)
                d.callback(matching[:count])


class FakeTokenSource:
    """
    A token source whose answers the test decides.  ``script`` holds the next answers in
    order (an L{AccessToken}, an exception to fail with, a Deferred, or L{WAIT} for one kept in
    ``pending``); when it is empty a fresh token valid for ``lifetime`` seconds is issued.
    ``failing`` makes every call fail as if the login host were unreachable.  ``asked`` holds
    the clock time of each call, ``calls`` counts them, ``evicted`` the tokens evicted.
    """

    def __init__(self, clock: Optional[Any] = None, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.script: list[Any] = []
        self.failing = False
        self.asked: list[float] = []
        self.calls = 0
        self.pending: list[Deferred] = []
        self.evicted: list[Optional[AccessToken]] = []

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else 0.0

    def acquire(self, credentials: Any) -> Deferred:
        self.calls += 1
        self.asked.append(self._now())
        if self.failing:
            return fail(TokenError("transient", "connection", "login host unreachable"))
        answer = self.script.pop(0) if self.script else AccessToken(f"token-{self.calls}", self._fresh_expiry())
        if answer == WAIT:
            answer = Deferred()
            self.pending.append(answer)
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def _fresh_expiry(self) -> float:
        return self._now() + self.lifetime if self.clock is not None else 10.0 ** 12

    def evict(self, credentials: Any, token: Optional[AccessToken] = None) -> Deferred:
        self.evicted.append(token)
        return succeed(None)


__all__ = ["ScriptedDeliverer", "RecordingObserver", "FakeTokenSource", "WAIT"]
