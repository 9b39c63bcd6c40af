"""
What the intake worker processes (``[gateway] workers = N``) last reported about their SMTP
sessions, for the main process's status page and ``/metrics``.

With workers, the main process's own listener factories see no SMTP session at all: every
connection goes to a worker.  Each worker reports its sessions and transactions in flight per
listener about once a second (L{gateway.workers.reports}); the status source adds the latest
report of every live worker to the main process's own figures, and a worker that ends takes
its sessions with it.  The event counters (messages accepted, refusals, sizes) need no holder:
the main process replays them into its own metrics as they arrive.
"""

from __future__ import annotations

from typing import Mapping

#: A worker's sessions and transactions in flight, per listener name.
ListenerGauges = Mapping[str, tuple[int, int]]


class WorkerIntake:
    """The latest gauges of every live worker (one per gateway, owned by its composition root)."""

    def __init__(self) -> None:
        self._by_worker: dict[int, ListenerGauges] = {}

    def update(self, worker: int, gauges: ListenerGauges) -> None:
        self._by_worker[worker] = dict(gauges)

    def forget(self, worker: int) -> None:
        """The worker ended: its sessions ended with it."""
        self._by_worker.pop(worker, None)

    def sessions(self, listener: str) -> int:
        return sum(gauges.get(listener, (0, 0))[0] for gauges in self._by_worker.values())

    def transactions(self, listener: str) -> int:
        return sum(gauges.get(listener, (0, 0))[1] for gauges in self._by_worker.values())


__all__ = ["WorkerIntake", "ListenerGauges"]
