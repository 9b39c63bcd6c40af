"""
Per-mailbox admission: how many Graph requests a sending mailbox may have in flight, how fast
it may start new messages, and when it is paused.

Graph limits concurrency per app + mailbox (4) and Exchange limits a mailbox to 30 messages a
minute (graph-facts §5).  Each sending mailbox gets its own state here, so one throttled
mailbox never slows the others.

The queue runner calls the deliverer with a global concurrency bound, so waiting here would
let a paused mailbox occupy every runner slot.  Admission therefore never waits longer than
``max_hold``: a message that cannot start soon gets a ``Later(retry_at)`` at once and the
runner slot is freed.  Pacing uses a GCRA (virtual scheduling) with *reservations*: a message
told to come back at time T holds the slot at T (keyed by its queue id), so a crowd of deferred
messages does not come back together and collide again.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

#: A reservation is forgotten this long after its time if nobody claimed it.
RESERVATION_GRACE = 600.0
#: A reservation claimed this much late is considered stale and re-booked (pause, restart).
STALE_CLAIM = 30.0
#: Backoff for a 429 that carries no Retry-After: first, growth factor, cap.
THROTTLE_BACKOFF = (5.0, 2.0, 300.0)


@attrs.frozen
class Slot:
    """Permission to start one delivery now; ``release()`` exactly once when it is over."""

    scheduler: "MailboxScheduler"
    key: Hashable

    def release(self) -> None:
        self.scheduler._release(self.key)


@attrs.frozen
class Later:
    """Not now: come back at ``retry_at`` (absolute time)."""

    retry_at: float
    reason: str


@attrs.define
class MailboxState:
    in_flight: int = 0
    tat: float = 0.0  # GCRA theoretical arrival time
    paused_until: float = 0.0
    pause_reason: str = ""
    throttles: int = 0  # consecutive 429s without Retry-After
    reservations: dict = attrs.field(factory=dict)
    max_in_flight: int = 0
    started: int = 0


class MailboxScheduler:
    """
    Admission control per key (a sending mailbox within a tenant).

    ``concurrency`` caps deliveries in flight per mailbox (each delivery makes one request at a
    time, so this also caps requests); ``rate`` is messages per minute with ``burst`` allowed
    back to back; ``max_hold`` is the longest admission ever waits before answering ``Later``.
    """

    def __init__(self, clock: IReactorTime, concurrency: int = 2, rate: float = 30.0, burst: int = 1,
                 max_hold: float = 2.0) -> None:
        self._clock = clock
        self.concurrency = concurrency
        self.interval = 60.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.max_hold = max_hold
        self._states: dict[Hashable, MailboxState] = {}
        self._admissions = 0

    def state(self, key: Hashable) -> Optional[MailboxState]:
        return self._states.get(key)

    def snapshot(self) -> tuple[tuple[Hashable, int, float, str, float], ...]:
        """
        Read-only view for the status page: ``(key, in_flight, paused_until, pause_reason,
        next_slot)`` per known mailbox, where ``next_slot`` is the earliest time a new message
        could start under the pacing rate.
        """
        return tuple(
            (key, st.in_flight, st.paused_until, st.pause_reason, max(st.paused_until, st.tat - self.tolerance))
            for key, st in self._states.items()
        )

    def admit(self, key: Hashable, ticket: str) -> "Deferred[Any]":
        """Fires with a L{Slot} (start now) or a L{Later}; never waits more than ``max_hold``."""
        now = self._clock.seconds()
        self._admissions += 1
        if self._admissions % 1000 == 0:
            self._sweep(now)
        st = self._states.setdefault(key, MailboxState())
        if st.paused_until > now:
            st.reservations.pop(ticket, None)
            return succeed(Later(st.paused_until, st.pause_reason or "mailbox paused"))
        start_at = st.reservations.get(ticket)
        if start_at is None or start_at < now - STALE_CLAIM:
            start_at = self._book(st, now)
            st.reservations[ticket] = start_at
        if start_at - now > self.max_hold:
            return succeed(Later(start_at, "pacing this mailbox"))
        if start_at <= now:
            return succeed(self._start(key, st, ticket, now))
        return deferLater(self._clock, start_at - now, self._start_later, key, ticket)

    def _start_later(self, key: Hashable, ticket: str) -> Any:
        now = self._clock.seconds()
        st = self._states.setdefault(key, MailboxState())
        if st.paused_until > now:
            st.reservations.pop(ticket, None)
            return Later(st.paused_until, st.pause_reason or "mailbox paused")
        return self._start(key, st, ticket, now)

    def _start(self, key: Hashable, st: MailboxState, ticket: str, now: float) -> Any:
        st.reservations.pop(ticket, None)
        if st.in_flight >= self.concurrency:
            # The pacing slot is forfeited; that only ever makes the mailbox slower.
            return Later(now + self.interval, "mailbox has requests in flight")
        st.in_flight += 1
        st.started += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        return Slot(self, key)

    def _book(self, st: MailboxState, now: float) -> float:
        start = max(now, st.tat - self.tolerance)
        st.tat = max(st.tat, start) + self.interval
        return start

    def _release(self, key: Hashable) -> None:
        st = self._states.get(key)
        if st is not None and st.in_flight > 0:
            st.in_flight -= 1

    # -- feedback from Graph ---------------------------------------------------------------

    def pause(self, key: Hashable, seconds: Optional[float], reason: str) -> float:
        """
        Pause one mailbox (a 429 or MailboxConcurrency).  Without a Retry-After the pause grows
        with each consecutive throttle.  Returns the time the mailbox may start again.
        """
        now = self._clock.seconds()
        st = self._states.setdefault(key, MailboxState())
        if seconds is None:
            first, factor, cap = THROTTLE_BACKOFF
            seconds = min(cap, first * factor ** st.throttles)
        st.throttles += 1
        until = now + seconds
        if until > st.paused_until:
            st.paused_until = until
            st.pause_reason = reason
        # Everything booked inside the pause is void; pacing restarts at the pause's end.
        st.reservations.clear()
        st.tat = max(st.tat, st.paused_until)
        return st.paused_until

    def succeeded(self, key: Hashable) -> None:
        st = self._states.get(key)
        if st is not None:
            st.throttles = 0

    def _sweep(self, now: float) -> None:
        for key, st in list(self._states.items()):
            for ticket, at in list(st.reservations.items()):
                if at < now - RESERVATION_GRACE:
                    del st.reservations[ticket]
            if not st.in_flight and not st.reservations and st.paused_until < now and st.tat < now:
                del self._states[key]


__all__ = ["MailboxScheduler", "Slot", "Later", "MailboxState"]
