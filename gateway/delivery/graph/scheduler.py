"""
How long Graph's throttling pauses a sending mailbox.

Admission itself (concurrency, pacing, waiting out a pause) is the queue runner's job: it keeps
one ready queue per sending mailbox (L{gateway.queue.mailboxes}) and hands the deliverer only
what that mailbox can start now.  What stays here is the Graph-specific part: a 429 pauses one
mailbox for its ``Retry-After``, or — without one — for a pause that grows with each
consecutive throttle of that mailbox and resets at its first success.  The deliverer reports
the pause to the runner in L{Transient.pause_until}; the pause is also kept here so that an
entry handed over anyway during the pause (another runner, a test) is refused at no cost.
"""

from __future__ import annotations

from typing import Hashable, Optional

import attrs
from twisted.internet.interfaces import IReactorTime

#: Backoff for a 429 that carries no Retry-After: first, growth factor, cap.
THROTTLE_BACKOFF = (5.0, 2.0, 300.0)


@attrs.define
class ThrottleState:
    paused_until: float = 0.0
    pause_reason: str = ""
    throttles: int = 0  # consecutive 429s without a success in between


class MailboxThrottles:
    """Per-key (tenant + sending mailbox) memory of Graph's throttling."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._states: dict[Hashable, ThrottleState] = {}

    def state(self, key: Hashable) -> Optional[ThrottleState]:
        return self._states.get(key)

    def paused_until(self, key: Hashable) -> float:
        st = self._states.get(key)
        return st.paused_until if st is not None else 0.0

    def pause(self, key: Hashable, seconds: Optional[float], reason: str) -> float:
        """
        Pause one mailbox (a 429 or MailboxConcurrency).  Without a Retry-After the pause grows
        with each consecutive throttle.  Returns the time the mailbox may start again.
        """
        now = self._clock.seconds()
        st = self._states.setdefault(key, ThrottleState())
        if seconds is None:
            first, factor, cap = THROTTLE_BACKOFF
            seconds = min(cap, first * factor ** st.throttles)
        st.throttles += 1
        until = now + seconds
        if until > st.paused_until:
            st.paused_until = until
            st.pause_reason = reason
        return st.paused_until

    def succeeded(self, key: Hashable) -> None:
        self._states.pop(key, None)


__all__ = ["MailboxThrottles", "ThrottleState", "THROTTLE_BACKOFF"]
