"""
When to try a message again: the configured schedule, stretched by random jitter.

Jitter matters for a gateway: after an outage, thousands of messages failed within seconds of
each other; without jitter they would all hit Graph again in the same second.
"""

from __future__ import annotations

from typing import Callable, Sequence


def retry_delay(attempts: int, schedule: Sequence[float], jitter: float, random: Callable[[], float]) -> float:
    """
    Seconds to wait after the ``attempts``-th failed attempt (1 for the first failure).

    The schedule's n-th value applies after the n-th failure and the last value repeats.  The
    result lies in ``[d * (1 - jitter), d * (1 + jitter)]`` for the schedule value ``d``.
    """
    if not schedule:
        raise ValueError("retry schedule is empty")
    base = schedule[min(max(attempts, 1), len(schedule)) - 1]
    return max(0.0, base * (1.0 + jitter * (2.0 * random() - 1.0)))


__all__ = ["retry_delay"]
