"""
What graphsmtp-queue shows, as pure functions of spool entries: the stable JSON form of a
message, the list filters and the qshape-like summary.  No I/O here, so the JSON contract and
the bucket arithmetic are tested without a spool.
"""

from __future__ import annotations

import datetime
from typing import Any, Iterable, Optional

import attrs

from gateway.spool.entry import SpoolEntry

JSON_VERSION = 1
# qshape's buckets: minutes, each twice the previous; the last column is "older than that".
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
STATES = ("queued", "held", "failed", "incoming")


def iso(when: Optional[float]) -> Optional[str]:
    """ISO 8601 UTC with a Z, or None."""
    if when is None:
        return None
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def mailbox_of(entry: SpoolEntry) -> str:
    """The mailbox a message is sent as: decided at intake, else (older entries) its sender."""
    return (entry.sending_mailbox or entry.envelope.sender or "<>").lower()


def last_error(entry: SpoolEntry) -> Optional[str]:
    return entry.history[-1].reason if entry.history else None


def message_json(entry: SpoolEntry, state: str, now: float, failure_reason: Optional[str] = None) -> dict[str, Any]:
    """One message in the documented, stable JSON form (new keys may be added, none removed)."""
    p = entry.provenance
    return {
        "queue_id": entry.queue_id,
        "state": state,
        "received_at": iso(entry.received_at),
        "age_seconds": max(0, int(now - entry.received_at)),
        "size": entry.size,
        "sender": entry.envelope.sender,
        "recipients": list(entry.envelope.recipients),
        "sending_mailbox": entry.sending_mailbox,
        "node": p.node,
        "attempts": entry.attempts,
        # Only a queued message has a next attempt; 0 in the record means "due now".
        "next_attempt_at": iso(max(entry.next_attempt_at, entry.received_at)) if state == "queued" else None,
        "last_error": last_error(entry),
        "failure_reason": failure_reason if state == "failed" else None,
        "client": {
            "address": p.client_address,
            "name": p.client_name,
            "listener": p.listener,
            "tls": p.tls,
            "auth_identity": p.auth_identity,
        },
        "history": [{"at": iso(h.at), "reason": h.reason} for h in entry.history],
    }


@attrs.frozen
class Filters:
    """``list``/``failed``/``hold``/``release`` selection; an unset filter matches everything."""

    mailbox: Optional[str] = None
    older_than: Optional[float] = None
    reason: Optional[str] = None

    def matches(self, entry: SpoolEntry, now: float, reason: Optional[str] = None) -> bool:
        if self.mailbox is not None and mailbox_of(entry) != self.mailbox.lower():
            return False
        if self.older_than is not None and now - entry.received_at < self.older_than:
            return False
        if self.reason is not None:
            text = reason if reason is not None else (last_error(entry) or "")
            if self.reason.lower() not in text.lower():
                return False
        return True


@attrs.frozen
class SummaryRow:
    name: str
    total: int
    counts: tuple[int, ...]  # one per AGE_BUCKETS, plus one for older


def bucket_index(age_seconds: float) -> int:
    minutes = age_seconds / 60.0
    for i, limit in enumerate(AGE_BUCKETS):
        if minutes <= limit:
            return i
    return len(AGE_BUCKETS)


def summarise(entries: Iterable[SpoolEntry], now: float, by: str) -> tuple[SummaryRow, list[SummaryRow]]:
    """
    The TOTAL row and one row per sending mailbox (``by="mailbox"``) or recipient domain
    (``by="domain"``: a message to two domains counts once in each, as qshape does), busiest
    first.
    """
    width = len(AGE_BUCKETS) + 1
    rows: dict[str, list[int]] = {}
    total = [0] * width
    for entry in entries:
        i = bucket_index(now - entry.received_at)
        total[i] += 1
        if by == "domain":
            keys = sorted({r.rpartition("@")[2].lower() for r in entry.envelope.recipients})
        else:
            keys = [mailbox_of(entry)]
        for key in keys:
            rows.setdefault(key, [0] * width)[i] += 1
    made = [SummaryRow(name, sum(c), tuple(c)) for name, c in rows.items()]
    made.sort(key=lambda r: (-r.total, r.name))
    return SummaryRow("TOTAL", sum(total), tuple(total)), made


def summary_lines(total: SummaryRow, rows: list[SummaryRow]) -> list[str]:
    headings = ["T"] + [str(b) for b in AGE_BUCKETS] + [f"{AGE_BUCKETS[-1]}+"]
    name_width = max([len(r.name) for r in rows] + [5])
    lines = [" " * name_width + "".join(f"{h:>6}" for h in headings)]
    for row in [total] + rows:
        lines.append(f"{row.name:>{name_width}}" + "".join(f"{n:>6}" for n in (row.total,) + row.counts))
    return lines


def summary_json(total: SummaryRow, rows: list[SummaryRow], by: str, state: str) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "by": by,
        "state": state,
        "buckets": [f"<={b}m" for b in AGE_BUCKETS] + [f">{AGE_BUCKETS[-1]}m"],
        "total": {"count": total.total, "counts": list(total.counts)},
        "rows": [{"name": r.name, "count": r.total, "counts": list(r.counts)} for r in rows],
    }


__all__ = [
    "JSON_VERSION", "AGE_BUCKETS", "STATES", "Filters", "SummaryRow", "iso", "mailbox_of",
    "message_json", "summarise", "summary_lines", "summary_json",
]
