"""
Delivery observers that feed the status page and the metrics.

L{RecentDeliveries} keeps the last N outcomes in a bounded deque (memory does not grow with
traffic); L{DeliveryDelayObserver} turns "accepted at → delivered at" into a histogram
observation.  Both are plain L{IDeliveryObserver}s added to the queue runner's observers by the
composition root, so neither the runner nor any deliverer knows the status page exists.
"""

from __future__ import annotations

import collections
from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gateway.delivery.interfaces import Delivered, IDeliveryObserver, Outcome, Permanent, Transient
from gateway.spool.entry import SpoolEntry
from gateway.status.interfaces import RecentDelivery


def _mailbox(entry: SpoolEntry) -> str:
    return entry.sending_mailbox or ""


def _detail(outcome: Outcome) -> str:
    """One line for the page: the reason (a delivery's detail), led by a failure's enhanced status code."""
    text = outcome.detail if isinstance(outcome, Delivered) else outcome.reason
    status: Optional[str] = outcome.status if isinstance(outcome, Permanent) else None
    if status and not str(text).startswith(str(status)):
        text = f"{status} {text}"
    return " ".join(str(text).split())[:300]


@implementer(IDeliveryObserver)
class RecentDeliveries:
    """The last ``size`` outcomes (delivered, deferred, failed), newest first from L{snapshot}."""

    def __init__(self, clock: IReactorTime, size: int = 50) -> None:
        self._clock = clock
        self._items: collections.deque[RecentDelivery] = collections.deque(maxlen=max(1, size))

    def _record(self, status: str, entry: SpoolEntry, outcome: Outcome) -> None:
        now = self._clock.seconds()
        self._items.append(RecentDelivery(
            at=now,
            queue_id=entry.queue_id,
            sender=entry.envelope.sender,
            recipients=tuple(entry.envelope.recipients),
            mailbox=_mailbox(entry),
            status=status,
            delay=max(0.0, now - entry.received_at),
            detail=_detail(outcome),
        ))

    def delivered(self, entry: SpoolEntry, outcome: Delivered) -> None:
        self._record("delivered", entry, outcome)

    def deferred(self, entry: SpoolEntry, outcome: Transient) -> None:
        self._record("deferred", entry, outcome)

    def failed(self, entry: SpoolEntry, outcome: Permanent) -> None:
        self._record("failed", entry, outcome)

    def snapshot(self) -> tuple[RecentDelivery, ...]:
        return tuple(reversed(self._items))


@implementer(IDeliveryObserver)
class DeliveryDelayObserver:
    """Calls ``observe(seconds)`` with the queue delay (acceptance → delivered) of each delivery."""

    def __init__(self, clock: IReactorTime, observe: Callable[[float], None]) -> None:
        self._clock = clock
        self._observe = observe

    def delivered(self, entry: SpoolEntry, outcome: Delivered) -> None:
        self._observe(max(0.0, self._clock.seconds() - entry.received_at))

    def deferred(self, entry: SpoolEntry, outcome: Transient) -> None:
        pass

    def failed(self, entry: SpoolEntry, outcome: Permanent) -> None:
        pass


__all__ = ["RecentDeliveries", "DeliveryDelayObserver"]
