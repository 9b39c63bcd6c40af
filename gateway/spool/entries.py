"""
Accepted entries after acceptance: read them, rewrite their record, and move them between
queue/, failed/, archive/ and held/ (delivered, failed, hold, release, requeue, delete).

The order of every move, and what recovery makes of one cut short by a crash, is in the
L{gateway.spool} package docstring ("state change", "delivered", "failed", "requeue", "hold",
"release").  Blocking: spool threads, or the queue command.
"""

from __future__ import annotations

import os
from typing import Optional

import attrs

from gateway.spool.accept import HOLD_NOTE, Acceptor, write_temp_record
from gateway.spool.entry import AttemptRecord, SpoolEntry
from gateway.spool.fileops import DIR_MODE, quietly, spool_error
from gateway.spool.interfaces import SpoolError
from gateway.spool.layout import ENV, MSG, REASON, SpoolFiles, SpoolLayout
from gateway.spool.quarantine import Quarantine, one_line, utc_timestamp
from gateway.spool.queueid import is_queue_id
from gateway.spool.record import RecordError, decode_record

RELEASE_NOTE = "released by admin"
_HISTORY_LIMIT = 50


class EntryMissing(KeyError):
    """The queue has no (readable) entry with this id any more."""


class EntryQuarantined(EntryMissing):
    """The entry was unreadable and has just been moved to quarantine/."""

    def __init__(self, queue_id: str, reason: str) -> None:
        super().__init__(queue_id)
        self.queue_id = queue_id
        self.reason = reason


class StoredEntries:
    """
    Reads and state changes of accepted entries.  The caller must own the queue for the
    moves (the daemon, or the queue command holding the lock): the runner must not be
    delivering an entry while it is held, failed or requeued.
    """

    def __init__(self, files: SpoolFiles, acceptor: Acceptor, quarantine: Quarantine) -> None:
        self._files = files
        self._acceptor = acceptor
        self._quarantine = quarantine

    @property
    def _layout(self) -> SpoolLayout:
        return self._files.layout

    # -- reading ---------------------------------------------------------------------------

    def load(self, queue_id: str, directory: Optional[str] = None, quarantine: bool = True) -> SpoolEntry:
        """
        The current entry; L{EntryMissing} if gone, L{EntryQuarantined} if unreadable.  Readers
        that do not own the queue (the queue command while a daemon runs) pass
        ``quarantine=False``: what looks broken to them may be a move the daemon is making.
        """
        directory = directory or self._layout.queue
        if not is_queue_id(queue_id):
            raise EntryMissing(queue_id)
        msg_path = SpoolLayout.path(directory, queue_id, MSG)
        try:
            entry = self._read_record(directory, queue_id)
            size = os.stat(msg_path).st_size
        except RecordError as e:
            reason = f"unreadable record: {e}"
        except FileNotFoundError:
            reason = "message file missing"
        else:
            if size == entry.size:
                return entry
            reason = f"message file is {size} bytes, record says {entry.size}"
        if directory == self._layout.queue and quarantine:
            self._quarantine.move_entry_files(directory, queue_id)
            raise EntryQuarantined(queue_id, reason)
        raise EntryMissing(queue_id)

    def _read_record(self, directory: str, queue_id: str) -> SpoolEntry:
        """
        ``queue_id``'s record in ``directory``, decoded with its message path beside it.  A
        missing record is L{EntryMissing}, any other read error a L{SpoolError}; a record that
        does not decode raises L{RecordError}, which each caller answers its own way.
        """
        try:
            data = self._files.ops.read_file(SpoolLayout.path(directory, queue_id, ENV))
        except FileNotFoundError:
            raise EntryMissing(queue_id) from None
        except OSError as e:
            raise spool_error(e, f"read the record of {queue_id}") from None
        return decode_record(data, SpoolLayout.path(directory, queue_id, MSG), queue_id)

    def queue_ids(self, directory: Optional[str] = None) -> list[str]:
        """Sorted ids with a record in ``directory`` (default the queue)."""
        directory = directory or self._layout.queue
        with os.scandir(directory) as it:
            ids = [e.name[: -len(ENV)] for e in it if e.name.endswith(ENV) and is_queue_id(e.name[: -len(ENV)])]
        return sorted(ids)

    def failure_reason(self, queue_id: str) -> str:
        path = SpoolLayout.path(self._layout.failed, queue_id, REASON)
        try:
            text = self._files.ops.read_file(path).decode("utf-8", "replace")
        except OSError:
            return ""
        for line in text.splitlines():
            if line.startswith("reason: "):
                return line[len("reason: "):]
        return ""

    # -- state changes in the queue --------------------------------------------------------

    def write_record(self, entry: SpoolEntry) -> SpoolEntry:
        """Atomically replace the queued record with ``entry``'s state."""
        final = SpoolLayout.path(self._layout.queue, entry.queue_id, ENV)
        if not os.path.exists(entry.message_path):
            raise EntryMissing(entry.queue_id)
        self._write_record_file(entry, final, set_mtime=True)
        try:
            self._files.queue_sync.sync()
        except OSError as e:
            raise spool_error(e, "sync the queue directory") from None
        return entry

    def _write_record_file(self, entry: SpoolEntry, final: str, set_mtime: bool) -> None:
        tmp = None
        try:
            tmp = write_temp_record(self._files, entry, set_mtime)
            self._files.ops.rename(tmp, final)
        except OSError as e:
            if tmp is not None:
                quietly(self._files.ops.unlink, tmp)
            raise spool_error(e, f"write the record of {entry.queue_id}") from None

    def set_draft(self, queue_id: str, draft_id: Optional[str]) -> SpoolEntry:
        """
        Record ``draft_id`` in the queued record of ``queue_id`` (read from disk, so no other
        field is taken from a stale copy); durable when this returns.
        """
        try:
            entry = self._read_record(self._layout.queue, queue_id)
        except RecordError as e:
            raise SpoolError(f"spool could not update the record of {queue_id}: {e}") from None
        return self.write_record(attrs.evolve(entry, draft_id=draft_id))

    # -- leaving the queue -----------------------------------------------------------------

    def remove(self, entry: SpoolEntry, archive: bool = False) -> None:
        """Delivered: delete (record first) or move to archive/ (message first)."""
        q, ops = self._layout.queue, self._files.ops
        try:
            if archive:
                ops.rename(SpoolLayout.path(q, entry.queue_id, MSG),
                           SpoolLayout.path(self._layout.archive, entry.queue_id, MSG))
                ops.rename(SpoolLayout.path(q, entry.queue_id, ENV),
                           SpoolLayout.path(self._layout.archive, entry.queue_id, ENV))
                return
            self._unlink_if_present(SpoolLayout.path(q, entry.queue_id, ENV))
            self._unlink_if_present(SpoolLayout.path(q, entry.queue_id, MSG))
        except OSError as e:
            raise spool_error(e, f"remove {entry.queue_id}") from None

    def _unlink_if_present(self, path: str) -> None:
        try:
            self._files.ops.unlink(path)
        except FileNotFoundError:
            pass

    def fail(self, entry: SpoolEntry, reason: str) -> SpoolEntry:
        """Move to failed/ with a .reason file; returns the entry as stored in failed/."""
        f, q, qid = self._layout.failed, self._layout.queue, entry.queue_id
        ops = self._files.ops
        failed_entry = attrs.evolve(entry, message_path=SpoolLayout.path(f, qid, MSG))
        text = (
            f"queue id: {qid}\n"
            f"failed at: {utc_timestamp(self._files.now())}\n"
            f"reason: {one_line(reason)}\n"
            f"attempts: {entry.attempts}\n"
        ) + "".join(f"attempt at {utc_timestamp(h.at)}: {one_line(h.reason)}\n" for h in entry.history)
        reason_tmp = None
        try:
            reason_tmp = self._files.write_temp_reason(qid, text, durable=True)
            ops.rename(reason_tmp, SpoolLayout.path(f, qid, REASON))
            ops.rename(SpoolLayout.path(q, qid, MSG), failed_entry.message_path)
            self._write_record_file(failed_entry, SpoolLayout.path(f, qid, ENV), set_mtime=False)
            self._unlink_if_present(SpoolLayout.path(q, qid, ENV))
            self._files.failed_sync.sync()
        except OSError as e:
            if reason_tmp is not None:
                quietly(ops.unlink, reason_tmp)
            raise spool_error(e, f"move {qid} to failed/") from None
        return failed_entry

    def delete(self, queue_id: str) -> bool:
        """Admin delete of a queued entry (record first).  False if it was not queued."""
        if not is_queue_id(queue_id):
            return False
        env = SpoolLayout.path(self._layout.queue, queue_id, ENV)
        try:
            self._files.ops.unlink(env)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise spool_error(e, f"delete {queue_id}") from None
        self._unlink_if_present(SpoolLayout.path(self._layout.queue, queue_id, MSG))
        return True

    # -- admin moves -----------------------------------------------------------------------

    def requeue(self, queue_id: str) -> SpoolEntry:
        """
        Put a failed entry back in the queue, due now, with a fresh queue lifetime (the old
        start is kept in the history line).  The attempt count is kept: it is the message's
        history, and an admin reading "attempts: 0" would think it was never tried.
        """
        f, q = self._layout.failed, self._layout.queue
        old = self.load(queue_id, directory=f)
        now = self._files.now()
        note = AttemptRecord(now, f"requeued by admin; first received {utc_timestamp(old.received_at)}")
        entry = attrs.evolve(
            old, message_path=SpoolLayout.path(q, queue_id, MSG), received_at=now,
            next_attempt_at=0.0, history=old.history + (note,),
        )
        self._acceptor.move_into_queue(entry, SpoolLayout.path(f, queue_id, MSG), "requeue")
        try:
            self._unlink_if_present(SpoolLayout.path(f, queue_id, ENV))
            self._unlink_if_present(SpoolLayout.path(f, queue_id, REASON))
        except OSError as e:
            raise spool_error(e, f"requeue {queue_id}") from None
        return entry

    def hold(self, queue_id: str) -> SpoolEntry:
        """
        Move a queued entry to held/ (protocol in the package docstring).  L{EntryMissing} if
        it is not queued.  The caller must own the queue (the daemon, or the queue command
        holding the lock): the runner must not be delivering it meanwhile.
        """
        q, h = self._layout.queue, self._layout.held
        old = self.load(queue_id)
        entry = attrs.evolve(old, message_path=SpoolLayout.path(h, queue_id, MSG),
                             history=(old.history + (AttemptRecord(self._files.now(), HOLD_NOTE),))[-_HISTORY_LIMIT:])
        try:
            os.makedirs(h, mode=DIR_MODE, exist_ok=True)  # spools made before held/ existed
            self._files.ops.rename(SpoolLayout.path(q, queue_id, MSG), entry.message_path)
            self._write_record_file(entry, SpoolLayout.path(h, queue_id, ENV), set_mtime=False)
            self._unlink_if_present(SpoolLayout.path(q, queue_id, ENV))
            self._files.held_sync.sync()
        except OSError as e:
            raise spool_error(e, f"hold {queue_id}") from None
        return entry

    def release(self, queue_id: str) -> SpoolEntry:
        """
        Put a held entry back in the queue with its schedule and attempt count, and its queue
        lifetime extended by the time it was held (a held message never expires while held).
        L{EntryMissing} if it is not held.
        """
        q, h = self._layout.queue, self._layout.held
        old = self.load(queue_id, directory=h)
        now = self._files.now()
        held_at = next((r.at for r in reversed(old.history) if r.reason == HOLD_NOTE), now)
        held_for = max(0.0, now - held_at)
        note = AttemptRecord(now, f"{RELEASE_NOTE} after {int(held_for)}s on hold; queue lifetime extended by as much")
        entry = attrs.evolve(old, message_path=SpoolLayout.path(q, queue_id, MSG),
                             received_at=old.received_at + held_for,
                             history=(old.history + (note,))[-_HISTORY_LIMIT:])
        self._acceptor.move_into_queue(entry, SpoolLayout.path(h, queue_id, MSG), "release", set_mtime=True)
        try:
            self._unlink_if_present(SpoolLayout.path(h, queue_id, ENV))
        except OSError as e:
            raise spool_error(e, f"release {queue_id}") from None
        return entry


__all__ = ["StoredEntries", "EntryMissing", "EntryQuarantined", "RELEASE_NOTE"]
