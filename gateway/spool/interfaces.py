"""
The spool's contract with intake (SMTP, sendmail) and with the queue runner.

Every operation returns a Deferred: blocking file work (write, fsync, rename, directory fsync)
runs in the spool's own thread pool, never on the reactor thread and never in the reactor's
default pool (which the DNS resolver shares).
"""

from __future__ import annotations

from typing import Callable, Optional

from zope.interface import Attribute, Interface


class SpoolError(Exception):
    """
    The spool could not do what was asked (disk full, permission, fsync failure).

    Intake maps this to a transient SMTP reply (451 4.3.0, or 452 4.3.1 when
    ``out_of_space`` is true) — never a 5xx, because the sender must keep the message.
    """

    def __init__(self, message: str, out_of_space: bool = False, errno: Optional[int] = None) -> None:
        super().__init__(message)
        self.out_of_space = out_of_space
        #: The OS error number behind it, when there is one (callers map causes: the sendmail
        #: exit status, the once-per-condition log).
        self.errno = errno


class ISpoolWriter(Interface):
    """
    One message being received; one writer per SMTP transaction (not per recipient).

    Bytes are the message as it will be stored: CRLF line endings, dot-unstuffed, gateway
    headers already in front.  The writer buffers and hands chunks to its thread pool in
    order; when too many bytes are waiting for the disk it calls the ``pause`` callback given
    to ``set_flow_control`` and later ``resume``, so a fast client is slowed to disk speed
    instead of growing memory.
    """

    queue_id = Attribute("The queue id this message will have once committed (str).")
    bytes_written = Attribute("How many bytes were handed to write() so far (int).")

    def set_flow_control(pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Register callbacks used for back-pressure (typically transport.pauseProducing/resumeProducing)."""

    def write(data: bytes) -> None:
        """Append bytes to the message.  Never blocks; errors surface at commit()."""

    temp_path = Attribute(
        "Path of the temporary file holding what was written, valid after flush() until "
        "commit() or abort(); policies read the body from it (str)."
    )

    def flush():
        """
        Deferred that fires once everything written so far is in ``temp_path`` (not yet
        fsynced), so end-of-data policies can read the message from disk.
        """

    def commit(envelope, provenance, header_section: Optional[bytes] = None, sending_mailbox: Optional[str] = None):
        """
        Make the message durable and queue it.

        Order: flush the message and write the envelope/state record (both as temporary
        files), fsync both, rename the message and then the record into the queue, fsync the
        queue directory.  A record in the queue is what marks an entry complete.  Only when the returned
        Deferred fires (with the new L{gateway.spool.entry.SpoolEntry}) may the caller say 250.

        ``header_section``, when given, replaces the header section of what was written (the
        bytes up to and including the first empty line) — this is how policy header edits land
        on disk before the 250, so the spool holds exactly what will be delivered.

        ``sending_mailbox`` is the intake's decision (L{gateway.mail.message.choose_sending_mailbox}),
        recorded as L{SpoolEntry.sending_mailbox} for the deliverer to execute.

        Fails with L{SpoolError} on any disk trouble, leaving no partial entry in the queue.
        """

    def abort():
        """Discard everything written (client vanished, message refused).  Returns a Deferred."""


class ISpool(Interface):
    """The durable message store."""

    def open_writer():
        """Start a new message; returns a Deferred firing with an L{ISpoolWriter}."""

    def recover():
        """
        Bring the spool into a known state at start-up and return a Deferred firing with the
        queued L{SpoolEntry} values (or an iterator of them): half-written temporary files are
        removed, unreadable entries are moved to quarantine with a log line, never a crash.
        """

    def load(queue_id: str):
        """Deferred firing with the current L{SpoolEntry} for ``queue_id``."""

    def update(entry):
        """Persist a new state for an entry atomically (write-new + rename); Deferred."""

    def remove(entry):
        """Delete (or archive, when configured) a delivered entry; Deferred."""

    def fail(entry, reason: str):
        """Move an entry to the failed/ directory with the reason kept beside it; Deferred."""


class IQueueSpool(ISpool):
    """
    Optional extras a spool can offer the queue runner (added after the first contract; a
    plain L{ISpool} still works, without these features).  L{gateway.spool.store.DirectorySpool}
    provides them.
    """

    def on_commit(callback: Callable[..., None]) -> Callable[[], None]:
        """
        Call ``callback(entry)`` on the reactor thread whenever a message is committed, so the
        runner starts delivering it at once instead of at its next scan.  Returns a function
        that unregisters the callback.
        """

    def recover_schedule():
        """
        Like L{ISpool.recover}, but scalable: a Deferred firing with a list of
        ``(due_hint, queue_id)`` pairs instead of loaded entries.  ``due_hint`` is a POSIX time
        that may be early (never assumed exact): the runner loads the entry when the hint is
        due and reschedules if its real ``next_attempt_at`` is later.
        """

    def scan_incoming():
        """
        Deferred firing with an object with ``entries`` (L{SpoolEntry} values that arrived
        from another process, such as the sendmail command, and are now queued) and
        ``requests`` (admin requests with ``action`` in "retry", "delete", "requeue", "hold",
        "release" and ``target`` a queue id or "all").  Cheap enough to call every few seconds.
        """

    def delete(queue_id: str):
        """Drop a queued entry for good (admin); Deferred firing with True if it existed."""

    def requeue(queue_id: str):
        """Move a failed entry back into the queue, due now; Deferred firing with the entry."""

    def hold(queue_id: str):
        """
        Take a queued entry out of the queue (admin hold): never attempted, never expired,
        until released.  Deferred firing with the held entry; fails with KeyError if not queued.
        """

    def release(queue_id: str):
        """Put a held entry back in the queue (schedule kept); Deferred firing with the entry."""

    def held_ids():
        """Deferred firing with the ids of the held entries."""


class IDraftJournal(Interface):
    """
    Where a deliverer durably notes the next hop's draft of a message before filling it, so a
    crash or a failed attempt never leaves it behind: the next attempt (in this process or
    after a restart) finds the id and deletes (or resumes) the draft first.  Implemented by the
    spool (L{gateway.spool.store.DirectorySpool} keeps it in ``SpoolEntry.draft_id``) and
    owned by it, so storage never imports delivery; the deliverer gets it injected and never
    imports the spool's implementation.
    """

    def note_draft(entry, draft_id):
        """
        Record that ``entry`` (a L{gateway.spool.entry.SpoolEntry}) now has the draft
        ``draft_id`` (``None``: no draft any more).  Returns a Deferred that fires once the
        record is durable (fsynced), or fails if it could not be written.
        """

    def draft_of(entry):
        """
        The draft id last recorded for ``entry``: the journal's own memory wins over
        ``entry.draft_id``, which may come from a copy read before the last note.
        """


class IEntryQuarantine(Interface):
    """
    How a deliverer takes an entry it must never send (its message file no longer matches the
    digest taken at intake) out of the queue, kept for an admin.  Implemented by the spool.
    """

    def quarantine(entry, reason: str):
        """
        Move ``entry``'s files aside with ``reason``; Deferred firing with where they went.
        Once it fired, the entry is no longer queued.
        """


__all__ = ["SpoolError", "ISpoolWriter", "ISpool", "IQueueSpool", "IDraftJournal", "IEntryQuarantine"]
