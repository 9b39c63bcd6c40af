"""
Repeated identical errors, logged once per condition instead of once per message.

A full disk (ENOSPC), a read-only remount or a quota makes *every* state change of *every*
message fail the same way until an admin acts.  One CRITICAL line per message and attempt
buries the cause and can fill the very disk that is full.  L{RepeatedErrors} logs the first
occurrence of a condition — an operation kind and an errno — loudly, counts the repeats, logs
a summary at most every ``summary_interval`` seconds while it lasts (driven by the failures
themselves, so an idle gateway schedules nothing), and one line when the operation works
again, with how many times it failed meanwhile.
"""

from __future__ import annotations

import errno as errno_names
from typing import Optional

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

SUMMARY_INTERVAL = 300.0


@attrs.define
class _Condition:
    kind: str
    errno: Optional[int]
    text: str
    since: float
    count: int = 1
    summarised_at: float = 0.0
    summarised_count: int = 1


class RepeatedErrors:
    """One log line per condition (plus summaries and a recovery line), not one per event."""

    log = Logger(namespace="gateway.spool")

    def __init__(self, clock: IReactorTime, summary_interval: float = SUMMARY_INTERVAL) -> None:
        self._clock = clock
        self._interval = summary_interval
        self._active: dict[tuple[str, Optional[int]], _Condition] = {}

    @property
    def active(self) -> tuple[str, ...]:
        """What is failing now, one text per condition (for status pages and tests)."""
        return tuple(c.text for c in self._active.values())

    def failed(self, kind: str, errno: Optional[int], text: str) -> None:
        """``kind`` of operation (``"update"``, ``"remove"``…) failed with ``errno``; ``text`` says how."""
        now = self._clock.seconds()
        condition = self._active.get((kind, errno))
        if condition is None:
            self._active[(kind, errno)] = _Condition(kind, errno, text, now, summarised_at=now)
            self.log.critical(
                "SPOOL TROUBLE: {text} [{code}]. Messages stay queued and are retried; further identical "
                "errors are counted, not logged (summary every {interval:.0f}s).",
                text=text, code=_code(errno), interval=self._interval, spool_condition=kind)
            return
        condition.count += 1
        if now - condition.summarised_at >= self._interval:
            self.log.error("spool trouble still there: {kind} failed {new} more times in {seconds:.0f}s "
                           "({total} since {duration:.0f}s ago): {text}",
                           kind=kind, new=condition.count - condition.summarised_count,
                           seconds=now - condition.summarised_at, total=condition.count,
                           duration=now - condition.since, text=condition.text, spool_condition=kind)
            condition.summarised_at, condition.summarised_count = now, condition.count

    def succeeded(self, kind: str) -> None:
        """An operation of ``kind`` worked: its conditions are over."""
        for key in [k for k in self._active if k[0] == kind]:
            condition = self._active.pop(key)
            self.log.info("spool {kind} operations work again after {count} failure(s) over {duration:.0f}s "
                          "({code}: {text})", kind=kind, count=condition.count,
                          duration=self._clock.seconds() - condition.since, code=_code(condition.errno),
                          text=condition.text, spool_condition=kind)


def _code(errno: Optional[int]) -> str:
    if errno is None:
        return "no errno"
    return errno_names.errorcode.get(errno, str(errno))


__all__ = ["RepeatedErrors", "SUMMARY_INTERVAL"]
