"""
Intake reports: what a worker counted, sent to the main process so that ``/metrics`` and the
status page cover the whole gateway, not only what the main process accepted itself.

A worker counts in L{ReportingMetrics} (its hooks are those the SMTP factories and the policy
chains call) and L{IntakeReporter} sends, a second after something changed (and never while
nothing does: an idle worker has no timer), one JSON line on the commit-notice pipe: the messages accepted (their sizes, for the size
histogram), the refusals by reply class and by policy since the last report, and the sessions
and transactions in flight per listener.  The main process replays the events into its own
metrics (L{apply_report}) and keeps the gauges per worker
(L{gateway.status.worker_intake.WorkerIntake}).

A worker killed outright loses at most its last second of counts; its mail is safe (the commit
notices and the sweep after its death are a separate matter, L{gateway.workers.supervisor}).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable, Optional, Sequence

from twisted.logger import Logger

from gateway.status.metrics import GatewayMetrics, reply_class
from gateway.status.worker_intake import WorkerIntake

#: A change is reported this long after it (what changes meanwhile goes in the same report).
REPORT_INTERVAL = 1.0
#: ... and as soon as this many messages were accepted since the last one (bounds a line).
MAX_SIZES = 500

log = Logger(namespace="gateway.workers.reports")


class ReportingMetrics(GatewayMetrics):
    """A worker's metrics: the intake events are kept for the next report (no registry use)."""

    def __init__(self) -> None:
        super().__init__(process=False)
        self.sizes: dict[str, list[int]] = {}
        self.refused: Counter[tuple[str, str]] = Counter()
        self.policy: Counter[tuple[str, str, str]] = Counter()
        #: Told of every change: ``changed(now=True)`` when enough has piled up to send at once.
        self.changed: Callable[..., None] = lambda now=False: None
        self._count = 0

    def message_accepted(self, listener: str, size: int) -> None:
        self.sizes.setdefault(listener, []).append(int(size))
        self._count += 1
        self.changed(now=self._count >= MAX_SIZES)

    def reply_refused(self, listener: str, code: int) -> None:
        self.refused[(listener, reply_class(code))] += 1
        self.changed()

    def policy_refused(self, listener: str, policy: str, code: Optional[int]) -> None:
        self.policy[(listener, policy, reply_class(code or 550))] += 1
        self.changed()

    def in_use_changed(self, listener: str) -> None:
        self.changed()

    def take(self) -> dict:
        """The events since the last call (and forget them)."""
        events = {
            "accepted": self.sizes,
            "refused": [[listener, cls, n] for (listener, cls), n in self.refused.items()],
            "policy": [[listener, policy, cls, n] for (listener, policy, cls), n in self.policy.items()],
        }
        self.sizes, self.refused, self.policy, self._count = {}, Counter(), Counter(), 0
        return events


class IntakeReporter:
    """
    Sends a worker's report: L{REPORT_INTERVAL} seconds after a change, at once when
    L{MAX_SIZES} messages piled up, and a last one when the worker stops.  ``listeners`` are the
    worker's listener parts (``config.name``, ``factory.sessions``, ``factory.in_flight``).
    """

    def __init__(self, clock: Any, metrics: ReportingMetrics, listeners: Sequence[Any],
                 send: Callable[[bytes], None]) -> None:
        self._clock = clock
        self._metrics = metrics
        self._listeners = listeners
        self._send = send
        self._last_gauges: Optional[dict] = None
        self._pending: Any = None
        self._running = False

    def start(self) -> None:
        self._running = True
        self._metrics.changed = self._changed

    def stop(self) -> None:
        self._running = False
        self._metrics.changed = lambda now=False: None
        self.report()

    def _changed(self, now: bool = False) -> None:
        if now:
            self.report()
        elif self._pending is None and self._running:
            self._pending = self._clock.callLater(REPORT_INTERVAL, self.report)

    def gauges(self) -> dict:
        return {part.config.name: [len(part.factory.sessions), part.factory.in_flight] for part in self._listeners}

    def report(self) -> None:
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        events = self._metrics.take()
        gauges = self.gauges()
        if not any(events.values()) and gauges == self._last_gauges:
            return
        self._last_gauges = gauges
        line = json.dumps({**events, "gauges": gauges}, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            self._send(line)
        except OSError as e:
            # The main process is gone (EPIPE): this worker stops on its own; counts are moot.
            log.debug("intake report not sent: {error}", error=str(e))


def is_report(line: bytes) -> bool:
    return line.startswith(b"{")


def apply_report(line: bytes, worker: int, metrics: GatewayMetrics, intake: WorkerIntake) -> None:
    """Replay one worker's report into the main process's ``metrics`` and ``intake`` gauges."""
    try:
        report = json.loads(line)
        gauges = {str(name): (int(sessions), int(transactions))
                  for name, (sessions, transactions) in report.get("gauges", {}).items()}
        accepted = [(str(listener), int(size)) for listener, sizes in report.get("accepted", {}).items()
                    for size in sizes]
        refused = [(str(listener), str(cls), int(n)) for listener, cls, n in report.get("refused", [])]
        policy = [(str(listener), str(name), str(cls), int(n)) for listener, name, cls, n in report.get("policy", [])]
    except (ValueError, TypeError, AttributeError) as e:
        # Our own worker wrote it: a garbled line is a bug worth one line, never a crash.
        log.warn("ignored a garbled intake report from worker {worker}: {error}", worker=worker, error=str(e))
        return
    intake.update(worker, gauges)
    for listener, size in accepted:
        metrics.message_accepted(listener, size)
    for listener, cls, n in refused:
        metrics.smtp_refused.labels(listener, cls).inc(n)
    for listener, name, cls, n in policy:
        metrics.policy_refusals.labels(listener, name, cls).inc(n)


__all__ = ["ReportingMetrics", "IntakeReporter", "apply_report", "is_report", "REPORT_INTERVAL", "MAX_SIZES"]
