"""
L{SpoolDisk}: every blocking operation on the spool, behind one object.

The daemon runs these operations in its spool thread pool (through L{gateway.spool.store});
the sendmail and queue commands call them directly.  One object for all three is what keeps
them agreeing on the formats and the crash-safety rules, which are described once, in the
L{gateway.spool} package docstring.

This module is only the façade: each job lives in its own module and is reached through the
methods below —

    layout.py      paths, the per-process context (L{SpoolFiles}), the spool lock
    accept.py      writing a message and committing it (group commit), moving into queue/
    incoming.py    sendmail drop-offs and the queue command's control requests
    entries.py     loading accepted entries and moving them between states
    recovery.py    the start-up pass
    quarantine.py  moving what cannot be delivered aside

The names other modules have always imported from here (L{SpoolLayout}, L{TempMessage},
L{ControlRequest}, L{EntryMissing}, …) are re-exported.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable, Optional

from gateway.spool.accept import HOLD_NOTE, Acceptor, CommitRequest, CommitResult, TempMessage
from gateway.spool.dirsync import DirectorySyncer
from gateway.spool.entries import RELEASE_NOTE, EntryMissing, EntryQuarantined, StoredEntries
from gateway.spool.entry import SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.incoming import (
    ABANDONED_TEMP_AGE,
    ALL,
    CONTROL,
    CONTROL_ACTIONS,
    INCOMING_GRACE,
    ControlRequest,
    DropBox,
    IncomingScan,
    Refused,
)
from gateway.spool.layout import ENV, MSG, REASON, SpoolBusy, SpoolFiles, SpoolLayout, SpoolLock
from gateway.spool.quarantine import Quarantine, Quarantined
from gateway.spool.record import DIGEST_ALGORITHM, file_digest
from gateway.spool.recovery import Recovery, RecoveryReport


class SpoolDisk:
    """
    Blocking spool operations.  Thread-safe for distinct queue ids; the daemon never works on
    the same id from two threads at once (one writer per message, one runner task per entry).

    ``tag`` marks this process's temp files in tmp/, so recovery removes only files that no
    live writer of this process owns.  ``node`` (the cluster node id or host name) is stamped
    into the provenance of what this spool accepts; None for the command-line tools.
    """

    def __init__(self, root: str, ops: Optional[FileOps] = None, tag: Optional[str] = None,
                 clock: Callable[[], float] = time.time, node: Optional[str] = None) -> None:
        self.files = SpoolFiles(root, ops if ops is not None else FileOps(), tag or os.urandom(4).hex(), clock)
        self._lock = SpoolLock(self.files.layout)
        self._lock_mutex = threading.Lock()  # recovery and the first intake may both lock
        #: How long the daemon waits for the spool lock (the queue command holds it briefly).
        self.lock_wait = 10.0
        quarantine = Quarantine(self.files)
        self._acceptor = Acceptor(self.files)
        self._quarantine = quarantine
        self._entries = StoredEntries(self.files, self._acceptor, quarantine)
        self._drop_box = DropBox(self.files, self._acceptor, self._entries, quarantine, node)
        self._recovery = Recovery(self.files, self._acceptor, self._drop_box, quarantine)

    # -- the shared context ----------------------------------------------------------------

    @property
    def layout(self) -> SpoolLayout:
        return self.files.layout

    @property
    def ops(self) -> FileOps:
        return self.files.ops

    @ops.setter
    def ops(self, ops: FileOps) -> None:
        self.files.ops = ops

    @property
    def tag(self) -> str:
        return self.files.tag

    @tag.setter
    def tag(self, tag: str) -> None:
        """An intake worker takes the tag its supervisor chose, so the main can sweep its temp files."""
        self.files.tag = tag

    @property
    def node(self) -> Optional[str]:
        """Stamped into the provenance of what this spool accepts (intake, sendmail imports)."""
        return self._drop_box.node

    @property
    def queue_sync(self) -> DirectorySyncer:
        return self.files.queue_sync

    def _tmp_path(self, queue_id: str, suffix: str) -> str:
        return self.files.tmp_path(queue_id, suffix)

    # -- set-up and locking (layout.py) ----------------------------------------------------

    def ensure_directories(self) -> None:
        """Create the layout (0700) if missing.  Existing directories keep their modes."""
        self.files.ensure_directories()

    def acquire_lock(self, wait: float = 0.0) -> None:
        """
        Take the spool lock; L{SpoolBusy} if another process keeps it for more than ``wait``
        seconds (the daemon waits a little: the queue command holds it briefly for offline
        changes).  Blocking: call from a thread.
        """
        with self._lock_mutex:
            self._lock.acquire(wait)

    def share_lock(self, fd: int) -> None:
        """An intake worker holds the main process's lock through the inherited ``fd`` (L{SpoolLock.share})."""
        with self._lock_mutex:
            self._lock.share(fd)

    @property
    def lock_descriptor(self) -> Optional[int]:
        """The descriptor through which this process holds the lock (None: not held)."""
        return self._lock.descriptor

    def release_lock(self) -> None:
        self._lock.release()
        self.files.close()

    def daemon_pid(self) -> Optional[int]:
        """The pid of the daemon holding the lock, or None when no daemon runs."""
        return self._lock.holder()

    # -- accepting a message (accept.py) ---------------------------------------------------

    def create_temp(self, queue_id: str, incoming: bool = False) -> TempMessage:
        """Open a new temp message file (tmp/ for the daemon, incoming/ for sendmail)."""
        return self._acceptor.create_temp(queue_id, incoming)

    def append(self, temp: TempMessage, chunks: Iterable[bytes]) -> None:
        self._acceptor.append(temp, chunks)

    def replace_header_section(self, temp: TempMessage, old_length: int, header_section: bytes) -> None:
        """See L{Acceptor.replace_header_section}."""
        self._acceptor.replace_header_section(temp, old_length, header_section)

    def publish(self, temp: TempMessage, entry: SpoolEntry, incoming: bool = False,
                held: bool = False) -> SpoolEntry:
        """
        The acceptance protocol for one message, for the commands (sendmail, adopt): flushed
        before it is renamed, as a drop-off must be (see L{Acceptor.publish_batch}).  Returns
        ``entry`` with its final message path; on any failure removes every trace and raises
        L{SpoolError}.  ``held`` commits into held/ instead of queue/ (``[queue] hold_new``).
        """
        where = "incoming" if incoming else "held" if held else "queue"
        result = self._acceptor.publish_batch([CommitRequest(entry, where, temp=temp)], rename_first=False)[0]
        if not isinstance(result, SpoolEntry):
            raise result
        return result

    @property
    def acceptor(self) -> Acceptor:
        """Who commits new messages (a commit process runs its own, and tells this one what it commits)."""
        return self._acceptor

    def publish_batch(self, requests: list[CommitRequest]) -> list[CommitResult]:
        """Group commit (see L{Acceptor.publish_batch})."""
        return self._acceptor.publish_batch(requests)

    def discard(self, temp: TempMessage) -> None:
        """Throw away an unfinished message (client vanished, message refused)."""
        self._acceptor.discard(temp)

    # -- reading and changing entries (entries.py, quarantine.py) --------------------------

    def load(self, queue_id: str, directory: Optional[str] = None, quarantine: bool = True) -> SpoolEntry:
        """See L{StoredEntries.load}."""
        return self._entries.load(queue_id, directory, quarantine)

    def queue_ids(self, directory: Optional[str] = None) -> list[str]:
        """Sorted ids with a record in ``directory`` (default the queue)."""
        return self._entries.queue_ids(directory)

    def failure_reason(self, queue_id: str) -> str:
        return self._entries.failure_reason(queue_id)

    def write_record(self, entry: SpoolEntry) -> SpoolEntry:
        """Atomically replace the queued record with ``entry``'s state."""
        return self._entries.write_record(entry)

    def set_draft(self, queue_id: str, draft_id: Optional[str]) -> SpoolEntry:
        """See L{StoredEntries.set_draft}."""
        return self._entries.set_draft(queue_id, draft_id)

    def remove(self, entry: SpoolEntry, archive: bool = False) -> None:
        """Delivered: delete (record first) or move to archive/ (message first)."""
        self._entries.remove(entry, archive)

    def fail(self, entry: SpoolEntry, reason: str) -> SpoolEntry:
        """Move to failed/ with a .reason file; returns the entry as stored in failed/."""
        return self._entries.fail(entry, reason)

    def delete(self, queue_id: str) -> bool:
        """Admin delete of a queued entry (record first).  False if it was not queued."""
        return self._entries.delete(queue_id)

    def requeue(self, queue_id: str) -> SpoolEntry:
        """See L{StoredEntries.requeue}."""
        return self._entries.requeue(queue_id)

    def hold(self, queue_id: str) -> SpoolEntry:
        """See L{StoredEntries.hold}."""
        return self._entries.hold(queue_id)

    def release(self, queue_id: str) -> SpoolEntry:
        """See L{StoredEntries.release}."""
        return self._entries.release(queue_id)

    def quarantine(self, entry: SpoolEntry, reason: str) -> str:
        """See L{Quarantine.take_out_of_queue}."""
        return self._quarantine.take_out_of_queue(entry, reason)

    # -- incoming/ (incoming.py) -----------------------------------------------------------

    def request_control(self, request: ControlRequest) -> str:
        """Drop an admin request for the running daemon (queue command)."""
        return self._drop_box.request_control(request)

    def scan_incoming(self, take_requests: bool = True) -> IncomingScan:
        """See L{DropBox.scan}."""
        return self._drop_box.scan(take_requests)

    # -- start-up (recovery.py) ------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """
        Start-up: lock, create the layout, clear stale temp files, finish interrupted imports
        and moves, delete never-acknowledged halves, quarantine what cannot be an entry, and
        return the schedule hints of everything queued (see L{Recovery}).
        """
        self.ensure_directories()
        self.acquire_lock(wait=self.lock_wait)
        return self._recovery.run()


__all__ = [
    "SpoolDisk", "SpoolLayout", "TempMessage", "CommitRequest", "ControlRequest", "IncomingScan", "RecoveryReport",
    "Quarantined", "Refused", "EntryMissing", "EntryQuarantined", "SpoolBusy", "MSG", "ENV", "REASON",
    # Also imported from here by the commands and tests:
    "ALL", "CONTROL", "CONTROL_ACTIONS", "HOLD_NOTE", "RELEASE_NOTE", "INCOMING_GRACE", "ABANDONED_TEMP_AGE",
    "DIGEST_ALGORITHM", "file_digest",
]
