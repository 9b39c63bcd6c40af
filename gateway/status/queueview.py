"""
A qshape-like picture of the spool, read from disk (blocking: run it in a thread).

Postfix admins read their queue with ``qshape``: messages per domain in age buckets that double
(0-5 min, 5-10, 10-20, … 1280+).  Here the same table is built twice, by sending mailbox (the
thing Graph throttles) and by recipient domain, plus the top deferral reasons and the failed
messages with their reasons.

Only the records are read, never message bodies.  Queue ids sort by acceptance time, so the
oldest ``limit`` records are read and the rest of a huge queue is only counted: the page stays
cheap at 100,000 queued messages and still shows where the old mail is stuck.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Optional

from gateway.status.interfaces import FailedMessage, QueueView, ShapeRow

#: Upper bounds of the age buckets in minutes; the last bucket is open-ended.
BUCKET_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
BUCKET_LABELS = tuple(f"<{m}m" for m in BUCKET_MINUTES) + (f"{BUCKET_MINUTES[-1]}m+",)


def bucket_of(age: float) -> int:
    minutes = age / 60.0
    for i, bound in enumerate(BUCKET_MINUTES):
        if minutes < bound:
            return i
    return len(BUCKET_MINUTES)


def recipient_domain(address: str) -> str:
    _, at, domain = address.rpartition("@")
    return domain.lower() if at and domain else "(no domain)"


def _shape(counter: dict, top: int) -> tuple[ShapeRow, ...]:
    rows = [ShapeRow(key, sum(counts), tuple(counts)) for key, counts in counter.items()]
    rows.sort(key=lambda r: (-r.total, r.key))
    return tuple(rows[:top])


def scan_queue(disk: Any, now: float, in_flight: Iterable[str] = (), limit: int = 2000, top: int = 20,
               failed_limit: int = 50) -> QueueView:
    """
    Read the spool under ``disk`` (a L{gateway.spool.disk.SpoolDisk}) into a L{QueueView}.
    ``in_flight`` are the queue ids being delivered right now (state ``active``).  Read-only:
    a record that vanishes or cannot be read meanwhile is skipped, never quarantined.
    """
    from gateway.spool.disk import EntryMissing

    active = set(in_flight)
    queue_ids = disk.queue_ids()
    counts = {"active": 0, "deferred": 0, "waiting": 0, "failed": 0}
    by_mailbox: dict = collections.defaultdict(lambda: [0] * len(BUCKET_LABELS))
    by_domain: dict = collections.defaultdict(lambda: [0] * len(BUCKET_LABELS))
    reasons: collections.Counter = collections.Counter()
    oldest: Optional[float] = None
    examined = 0
    for queue_id in queue_ids[:limit]:
        try:
            entry = disk.load(queue_id, quarantine=False)
        except (EntryMissing, OSError, ValueError):
            continue
        examined += 1
        age = max(0.0, now - entry.received_at)
        oldest = age if oldest is None else max(oldest, age)
        if queue_id in active:
            counts["active"] += 1
        elif entry.attempts > 0:
            counts["deferred"] += 1
        else:
            counts["waiting"] += 1
        if entry.history:
            reasons[_reason_key(entry.history[-1].reason)] += 1
        bucket = bucket_of(age)
        mailbox = entry.sending_mailbox or (entry.envelope.sender or "<>")
        by_mailbox[mailbox.lower()][bucket] += 1
        for domain in sorted({recipient_domain(r) for r in entry.envelope.recipients}):
            by_domain[domain][bucket] += 1
    # Beyond the examined part only the count is known; those are at least not active.
    unexamined = max(0, len(queue_ids) - examined)
    counts["waiting"] += unexamined

    failed_ids = disk.queue_ids(disk.layout.failed)
    counts["failed"] = len(failed_ids)
    failed = []
    for queue_id in reversed(failed_ids[-failed_limit:]):  # newest first
        try:
            entry = disk.load(queue_id, disk.layout.failed, quarantine=False)
        except (EntryMissing, OSError, ValueError):
            continue
        failed.append(FailedMessage(queue_id, entry.envelope.sender, tuple(entry.envelope.recipients),
                                    disk.failure_reason(queue_id), entry.received_at))
    return QueueView(
        counts=counts,
        oldest_age=oldest,
        bucket_labels=BUCKET_LABELS,
        by_mailbox=_shape(by_mailbox, top),
        by_domain=_shape(by_domain, top),
        deferral_reasons=tuple(reasons.most_common(10)),
        failed=tuple(failed),
        queued=len(queue_ids),
        examined=examined,
    )


def _reason_key(reason: str) -> str:
    """One line, bounded, so the same trouble groups together."""
    text = " ".join(reason.split())
    return text[:160]


__all__ = ["scan_queue", "bucket_of", "recipient_domain", "BUCKET_LABELS", "BUCKET_MINUTES"]
