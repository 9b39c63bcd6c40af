"""
Failed-login throttling per client address.

A relay login is worth guessing at, so every failed AUTH from an address makes the next
failure answer more slowly (``base_delay`` doubling up to ``max_delay``), and ``max_failures``
failures within ``window`` seconds lock the address out: further attempts are refused at once
with L{LoginThrottled} (421 and disconnect) until the oldest failure leaves the window.

A success does not clear the count: otherwise one valid account would let an attacker reset
the counter between guesses at other accounts.  IPv6 clients are counted per /64, because one
host commonly controls a whole /64.  Memory is bounded: at most ``max_tracked`` addresses are
remembered, expired ones are dropped first.
"""

from __future__ import annotations

import collections
from typing import Any, Deque, Optional

import attrs
from twisted.internet.interfaces import IReactorTime

from gateway.config.auth import ThrottleSettings
from gateway.policy.addresses import client_key


@attrs.frozen
class FailureOutcome:
    """What to do with one failed login: wait ``delay`` seconds then refuse, or lock out now."""

    delay: float
    locked_out: bool
    failures: int


def throttle_key(address: Optional[str]) -> str:
    """The bucket for a client address: the IPv4 address, the IPv6 /64, or the text as given."""
    return client_key(address)


class LoginThrottle:
    """Counts failed logins per client bucket; shared by every listener's portal."""

    def __init__(self, clock: IReactorTime, settings: ThrottleSettings = ThrottleSettings()) -> None:
        self.clock = clock
        self.settings = settings
        self._failures: dict[str, Deque[float]] = {}
        self.successes_total = 0
        self.failures_total = 0
        self.refused_total = 0
        self.lockouts_total = 0

    def _recent(self, key: str) -> Optional[Deque[float]]:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self.clock.seconds() - self.settings.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def is_locked_out(self, key: str) -> bool:
        times = self._recent(key)
        return times is not None and len(times) >= self.settings.max_failures

    def refuse(self) -> None:
        """Count an attempt refused because its address is locked out."""
        self.refused_total += 1

    def record_success(self, key: str) -> None:
        self.successes_total += 1

    def record_failure(self, key: str) -> FailureOutcome:
        self.failures_total += 1
        times = self._recent(key)
        if times is None:
            self._make_room()
            times = self._failures[key] = collections.deque()
        times.append(self.clock.seconds())
        count = len(times)
        if count >= self.settings.max_failures:
            self.lockouts_total += 1
            return FailureOutcome(0.0, True, count)
        delay = min(self.settings.base_delay * (2 ** (count - 1)), self.settings.max_delay)
        return FailureOutcome(delay, False, count)

    def _make_room(self) -> None:
        if len(self._failures) < self.settings.max_tracked:
            return
        for key in list(self._failures):
            self._recent(key)
        while len(self._failures) >= self.settings.max_tracked:
            # evict the bucket whose latest failure is oldest
            oldest = min(self._failures, key=lambda k: self._failures[k][-1])
            del self._failures[oldest]

    def stats(self) -> dict[str, Any]:
        """Counters for the status page and metrics; no addresses, no logins."""
        for key in list(self._failures):
            self._recent(key)
        locked = sum(1 for t in self._failures.values() if len(t) >= self.settings.max_failures)
        return {
            "login_successes_total": self.successes_total,
            "login_failures_total": self.failures_total,
            "login_refused_throttled_total": self.refused_total,
            "login_lockouts_total": self.lockouts_total,
            "addresses_tracked": len(self._failures),
            "addresses_locked_out": locked,
        }


__all__ = ["ThrottleSettings", "FailureOutcome", "LoginThrottle", "throttle_key"]
