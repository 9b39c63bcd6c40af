"""
The message file must still be the one accepted: the Graph deliverer checks the digest the
spool recorded at intake (``SpoolEntry.message_digest``) before anything is sent, and a file
that changed on disk is quarantined with one CRITICAL line instead of being sent as is.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from gateway.delivery.interfaces import IDraftJournal, IEntryQuarantine, Transient


@implementer(IDraftJournal, IEntryQuarantine)
class NoJournal:
    """
    What a deliverer uses when nothing durable was injected (unit tests, tools): drafts are
    still deleted when an attempt fails, but a crash may leave one behind; nothing can be
    quarantined, so a changed message is held back (and alarmed about) but stays queued.
    """

    def note_draft(self, entry: Any, draft_id: Optional[str]) -> Deferred:
        return succeed(None)

    def draft_of(self, entry: Any) -> Optional[str]:
        return getattr(entry, "draft_id", None)

    def quarantine(self, entry: Any, reason: str) -> Deferred:
        return fail(RuntimeError("no quarantine configured"))


def message_digest(path: str, algorithm: str) -> str:
    """``"<algorithm>:<hex>"`` of the file, streamed (blocking: runs in the io thread pool)."""
    with open(path, "rb") as f:
        return f"{algorithm}:{hashlib.file_digest(f, algorithm).hexdigest()}"


def digest_algorithm(entry: Any) -> Optional[str]:
    """The algorithm of the digest recorded at intake, when this Python has it (else None)."""
    expected = getattr(entry, "message_digest", None)
    if not expected:
        return None
    algorithm = expected.split(":", 1)[0]
    return algorithm if algorithm in hashlib.algorithms_guaranteed else None


class IntegrityCheck:
    """
    The digest check of L{gateway.delivery.graph.deliverer.GraphDeliverer}; ``journal`` (the
    spool, set by the wiring) is what quarantines, ``_alarmed`` the entries already alarmed
    about (one CRITICAL line per entry, not per attempt).
    """

    log: Logger
    journal: Any  # IEntryQuarantine
    _blocking: Callable[..., Deferred]
    _alarmed: set[str]

    async def _integrity_outcome(self, entry: Any, actual: Optional[str] = None) -> Optional[Transient]:
        """
        None when the message file still has the digest recorded at intake (or the entry is
        from a gateway that recorded none).  Otherwise the entry is quarantined — never sent —
        with one CRITICAL line, and the outcome says so.  ``actual``: the file's digest as
        read while preparing this attempt (None: read it now).
        """
        expected = getattr(entry, "message_digest", None)
        if not expected:
            return None
        algorithm = expected.split(":", 1)[0]
        if algorithm not in hashlib.algorithms_guaranteed:
            self.log.warn("graph {queue_id}: unknown digest {algorithm!r}; not verified", queue_id=entry.queue_id,
                          algorithm=algorithm)
            return None
        if actual is None or actual.split(":", 1)[0] != algorithm:
            try:
                actual = await self._blocking(message_digest, entry.message_path, algorithm)
            except OSError as e:
                return Transient(f"cannot read the message file: {e.strerror or e}")
        if actual == expected:
            return None
        return await self._quarantine(entry, expected, actual)

    async def _quarantine(self, entry: Any, expected: str, actual: Union[str, None]) -> Transient:
        reason = "message file changed on disk since it was accepted (digest mismatch)"
        try:
            where = await self.journal.quarantine(entry, reason)
        except Exception as e:  # noqa: BLE001 - not sent either way; retried (and not re-alarmed)
            where, fate = None, f"could NOT be quarantined ({e}); it stays queued and is never sent as is"
        else:
            fate = f"it was moved to {where}"
        if entry.queue_id not in self._alarmed:
            self._alarmed.add(entry.queue_id)
            self.log.critical(
                "INTEGRITY ALARM: message {queue_id} changed on disk since it was accepted (recorded {expected}, "
                "now {actual}); it was NOT sent and {fate}. Check the disk and the spool's permissions.",
                queue_id=entry.queue_id, expected=expected, actual=actual, fate=fate)
        return Transient(f"not sent: {reason}; " + ("quarantined" if where is not None else "quarantine failed"))


__all__ = ["NoJournal", "IntegrityCheck", "message_digest", "digest_algorithm"]
