"""
Accepting a message: the temp files it is written into, the group commit that makes a batch
of them durable and renames them into place, and the move of a written message and record
into queue/ that sendmail imports, requeue and release share.

Which bytes are flushed when, and why each rename order is safe, is the "accept" and "import"
part of the L{gateway.spool} package docstring.  Blocking: spool threads, or the sendmail
command.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any, Iterable, Optional, Union

import attrs

from gateway.spool import inflight
from gateway.spool.entry import AttemptRecord, SpoolEntry
from gateway.spool.fileops import quietly, spool_error
from gateway.spool.interfaces import SpoolError
from gateway.spool.journal import IntakeJournal, JournalEntry
from gateway.spool.layout import ENV, MSG, SpoolFiles, SpoolLayout
from gateway.spool.record import DIGEST_ALGORITHM, encode_record, file_digest

HOLD_NOTE = "held by admin"


@attrs.define
class TempMessage:
    """
    A message file being written: the open descriptor, what is in it so far, and the digest of
    those bytes, updated as they are appended (so intake never reads the message back to
    digest it).  ``digest_valid`` turns false when bytes already digested are rewritten.
    """

    queue_id: str
    path: str
    fd: Optional[int]
    size: int = 0
    hasher: Any = attrs.field(factory=lambda: hashlib.new(DIGEST_ALGORITHM), repr=False)
    digest_valid: bool = True

    def open_fd(self) -> int:
        """The descriptor of a message still being written (L{SpoolError} once it is closed)."""
        if self.fd is None:
            raise SpoolError(f"spool message file {self.path} is already closed")
        return self.fd


@attrs.frozen
class CommitRequest:
    """
    One message to accept (L{Acceptor.publish_batch}): ``entry`` as committed (its
    ``message_path`` and ``size`` are filled in), and the message either already in ``temp``
    (streamed, large) or still in memory as ``data`` (small: written by the commit itself, so
    it costs no thread hand-off of its own).  ``where``: "queue", "held" or "incoming".
    """

    entry: SpoolEntry
    where: str = "queue"
    temp: Optional[TempMessage] = None
    data: Optional[bytes] = None


#: What L{Acceptor.publish_batch} returns for each request.
CommitResult = Union[SpoolEntry, SpoolError]


@attrs.define
class _Staged:
    """A commit whose files are written but not yet flushed or renamed."""

    index: int
    where: str
    temp: TempMessage
    env_tmp: str
    env_fd: Optional[int]
    entry: SpoolEntry
    msg_final: str
    env_final: str
    renamed: list[str] = attrs.field(factory=list)
    #: The record as written (the journal keeps it too).
    record: bytes = b""

    def open_fds(self) -> list[int]:
        return [fd for fd in (self.temp.fd, self.env_fd) if fd is not None]


def _committed_entry(entry: SpoolEntry, history: tuple[AttemptRecord, ...], message_path: str, size: int,
                     message_digest: Optional[str]) -> SpoolEntry:
    """
    ``entry`` as committed: what ``attrs.evolve`` with these four fields gives, built directly
    (one construction per message instead of two evolves, which look up every field by name).
    Names every field, so a field added to L{SpoolEntry} must be added here (a test checks).
    """
    return SpoolEntry(queue_id=entry.queue_id, envelope=entry.envelope, provenance=entry.provenance,
                      received_at=entry.received_at, message_path=message_path, size=size,
                      attempts=entry.attempts, next_attempt_at=entry.next_attempt_at, history=history,
                      sending_mailbox=entry.sending_mailbox, message_digest=message_digest,
                      draft_id=entry.draft_id)


def write_temp_record(files: SpoolFiles, entry: SpoolEntry, set_mtime: bool) -> str:
    """
    Write ``entry``'s record into a new temp file in tmp/ and make it durable; returns its path.
    ``set_mtime`` sets the schedule hint (see L{SpoolEntry.due_hint}).  On failure nothing is
    left behind and the OSError propagates.
    """
    hint = entry.due_hint if set_mtime and entry.next_attempt_at > 0 else None  # read at start-up
    return files.write_temp_file(entry.queue_id, ENV, encode_record(entry), durable=True, mtime=hint)


class Acceptor:
    """
    Writes new messages and commits them.  Thread-safe for distinct queue ids (one writer per
    message); remembers which ids are being committed so recovery running meanwhile does not
    take a commit's message, renamed in a moment before its record, for an orphan.
    """

    def __init__(self, files: SpoolFiles) -> None:
        self._files = files
        self._committing: set[str] = set()
        self._committing_lock = threading.Lock()
        self._destinations = {where: files.layout.destination(where) for where in ("queue", "held", "incoming")}
        # A new record due now needs no set_mtime: its write already stamped it with the wall
        # clock's now, a time that has passed for any later start-up, so it reads as "due now"
        # like received_at would.  Only when the spool's clock *is* the wall clock (the
        # daemon's reactor.seconds, the commands' time.time); a test clock gets the explicit hint.
        self._write_time_is_hint = files.now is time.time

    def is_committing(self, queue_id: str) -> bool:
        with self._committing_lock:
            return queue_id in self._committing

    def committing(self, queue_ids: list[str]) -> None:
        """``queue_ids`` are being committed elsewhere (L{gateway.spool.commit_process}): recovery leaves them be."""
        with self._committing_lock:
            self._committing.update(queue_ids)

    def committed(self, queue_ids: list[str]) -> None:
        """The commit of ``queue_ids`` announced with L{committing} has returned."""
        with self._committing_lock:
            self._committing.difference_update(queue_ids)

    # -- writing a message -----------------------------------------------------------------

    def create_temp(self, queue_id: str, incoming: bool = False) -> TempMessage:
        """Open a new temp message file (tmp/ for the daemon, incoming/ for sendmail)."""
        files = self._files
        path = self._places("incoming" if incoming else "queue", queue_id)[2]
        try:
            fd = files.ops.open_new(path)
        except OSError as e:
            raise spool_error(e, "create a message file") from None
        return TempMessage(queue_id, path, fd)

    def append(self, temp: TempMessage, chunks: Iterable[bytes]) -> None:
        data = b"".join(chunks)
        if not data:
            return
        try:
            self._files.ops.write(temp.open_fd(), data)
        except OSError as e:
            raise spool_error(e, "write the message") from None
        temp.size += len(data)
        temp.hasher.update(data)

    def replace_header_section(self, temp: TempMessage, old_length: int, header_section: bytes) -> None:
        """
        Replace the first ``old_length`` bytes of the file with ``header_section``.  Same length:
        overwritten in place; otherwise a new file gets the new header and a kernel-side copy
        of the body, so a 20 MB body is not read into memory for a one-line header edit.
        """
        # The body was digested with the old header in front; publishing digests the file again.
        # Only messages both streamed (larger than the writer's chunk) and edited by a policy pay
        # that second read.
        temp.digest_valid = False
        ops = self._files.ops
        try:
            if len(header_section) == old_length:
                ops.pwrite(temp.open_fd(), header_section, 0)
                return
            new_path = temp.path + ".h"
            new_fd = ops.open_new(new_path)
            try:
                ops.write(new_fd, header_section)
                ops.copy_range(temp.open_fd(), new_fd, old_length, temp.size - old_length)
            except OSError:
                quietly(ops.close, new_fd)
                quietly(ops.unlink, new_path)
                raise
            ops.close(temp.open_fd())
            quietly(ops.unlink, temp.path)
            temp.fd, temp.path = new_fd, new_path
            temp.size = len(header_section) + temp.size - old_length
        except OSError as e:
            raise spool_error(e, "rewrite the message headers") from None

    def discard(self, temp: TempMessage) -> None:
        """Throw away an unfinished message (client vanished, message refused)."""
        if temp.fd is not None:
            quietly(self._files.ops.close, temp.fd)
            temp.fd = None
        quietly(self._files.ops.unlink, temp.path)

    # -- committing ------------------------------------------------------------------------

    def publish_batch(self, requests: list[CommitRequest], rename_first: bool = True,
                      journal: Optional[IntakeJournal] = None) -> list[CommitResult]:
        """
        Group commit: accept every L{CommitRequest} in ``requests`` with one flush for all of
        them, in the order of the acceptance protocol (the package docstring's "accept").
        Returns one result per request, in order: the stored L{SpoolEntry}, or the
        L{SpoolError} that request failed with (its files are gone).  One bad request (a full
        disk while writing it) fails alone; a failed flush fails the whole batch.
        ``rename_first=False`` flushes before it renames, for commits off the daemon's intake
        path (adopting another node's entries, whose ids may be months old, would otherwise
        leave a marker that makes the next start-up check everything minted since).
        With a ``journal`` (the commit process's, L{gateway.spool.journal}), a batch of
        messages in memory bound for queue/ or held/ is made durable by one ``fdatasync`` of
        the journal instead of a flush of the filesystem.
        """
        results: list[Any] = [None] * len(requests)
        staged: list[_Staged] = []
        ids = [request.entry.queue_id for request in requests]
        self.committing(ids)
        try:
            for index, request in enumerate(requests):
                try:
                    staged.append(self._stage(index, request))
                except SpoolError as e:
                    results[index] = e
            entries = self._journal_entries(journal, requests, staged, rename_first) if staged else None
            if journal is not None and entries is not None:
                self._publish_journaled(staged, results, journal, entries, rename_first)
            elif staged:
                self._publish(staged, results, rename_first)
        finally:
            self.committed(ids)
        return results

    def _journal_entries(self, journal: Optional[IntakeJournal], requests: list[CommitRequest],
                         staged: list[_Staged], rename_first: bool) -> Optional[list[JournalEntry]]:
        """
        What ``journal`` is to keep of the batch, or None when it does not take it: it takes
        only messages that were in memory, bound for queue/ or held/, in a batch that fits.
        """
        if (journal is None or not rename_first or not self._files.ops.flushes_whole_filesystem
                or not all(requests[s.index].temp is None and s.where in ("queue", "held") for s in staged)):
            return None
        entries = [JournalEntry(s.entry.queue_id, s.where, s.record, requests[s.index].data or b"") for s in staged]
        return entries if journal.fits(entries) else None

    def _publish_journaled(self, staged: list[_Staged], results: list[Any], journal: IntakeJournal,
                           entries: list[JournalEntry], rename_first: bool) -> None:
        """
        Made durable by the journal first, then renamed into place: a power loss before the
        journal's flush leaves only temp files (nothing acknowledged, nothing to check), one after
        it leaves the journal, which holds every entry whole until the flush that retires it.  If
        the journal cannot be written, the batch is committed as without one.
        """
        try:
            journal.append(entries)
        except OSError:
            self._publish(staged, results, rename_first)
            return
        for group in self._rename_all(staged, results).values():
            for s in group:
                if self._closed_or_undone(s, results):
                    results[s.index] = s.entry
        if any(results[s.index] is not s.entry for s in staged):
            # Undone after all (their clients hear 451): their frames must not bring them back.
            try:
                journal.retire()
            except OSError:
                pass  # the journal is broken now: it takes no more batches, and stays for start-up

    def _publish(self, staged: list[_Staged], results: list[Any], rename_first: bool) -> None:
        """
        Entries bound for queue/ or held/ are renamed into place *before* the flush, so that
        one flush of the filesystem (``syncfs``) makes their data, their records and the
        renames durable together: a lone commit pays one flush instead of two.  File by file
        (no ``syncfs``, or ``[spool] flush = "fdatasync"``) the order gains nothing, and the
        flush comes first as before.  The process that commits an entry announces it only
        after the commit returns, and recovery skips the ids being committed.  Two things can still see an entry in the window: the sweep
        after another intake worker died (L{gateway.workers.spool_sweep}) and an admin's
        release of held/.  If the flush then fails, the entry is removed and its client told
        to try again: at worst a message delivered twice, never one lost — as in the window
        between the renames and the directory fsync before, which is now longer by the data
        flush.  A power loss in the window is what the marker of L{gateway.spool.inflight} is
        for.  incoming/ is scanned by the daemon, which imports what it finds: sendmail's
        drop-offs keep the flush-then-rename order.
        """
        early = [s for s in staged if s.where != "incoming"]
        marker = None
        if early and rename_first and self._files.ops.flushes_whole_filesystem:
            marker = inflight.mark(self._files, [s.entry.queue_id for s in early])
        if marker is None:
            early = []  # no marker, no window: flushed before renamed, as incoming/ is
        late = [s for s in staged if s.where == "incoming"] if early else staged
        try:
            self._publish_in_order(early, late, results)
        finally:
            if marker is not None:
                inflight.unmark(self._files, marker)

    def _publish_in_order(self, early: list[_Staged], late: list[_Staged], results: list[Any]) -> None:
        """``early`` renamed, everything flushed, ``late`` renamed; directories fsynced as needed."""
        by_directory = self._rename_all(early, results)
        in_place = [s for group in by_directory.values() for s in group]
        whole_filesystem = self._flush(in_place + late, results)
        if whole_filesystem is None:
            return
        if whole_filesystem:  # it covered the renames too
            for s in in_place:
                if self._closed_or_undone(s, results):
                    results[s.index] = s.entry
            by_directory = {}
        by_directory.update(self._rename_all(late, results))
        self._sync_directories(by_directory, results)

    def _flush(self, staged: list[_Staged], results: list[Any]) -> Optional[bool]:
        """
        One data flush for every staged file: True when it flushed the whole filesystem
        (renames done before it included), False when file by file, None when it failed (the
        whole batch is then undone).
        """
        try:
            return self._files.ops.sync_files([fd for s in staged for fd in s.open_fds()])
        except OSError as e:
            error = spool_error(e, "sync the message to disk")
            for s in staged:
                self._unstage(s)
                results[s.index] = error
            return None

    def _rename_all(self, staged: list[_Staged], results: list[Any]) -> dict[str, list[_Staged]]:
        """Message then record into place, for each commit; returns them by destination."""
        ops = self._files.ops
        by_directory: dict[str, list[_Staged]] = {}
        for s in staged:
            try:
                ops.rename(s.temp.path, s.msg_final)
                s.renamed.append(s.msg_final)
                ops.rename(s.env_tmp, s.env_final)
                s.renamed.append(s.env_final)
            except OSError as e:
                self._unstage(s)
                results[s.index] = spool_error(e, "move the message into the queue")
                continue
            by_directory.setdefault(s.where, []).append(s)
        return by_directory

    def _sync_directories(self, by_directory: dict[str, list[_Staged]], results: list[Any]) -> None:
        """One directory fsync per destination; only then is a commit's entry its result."""
        for where, group in by_directory.items():
            group = [s for s in group if self._closed_or_undone(s, results)]
            try:
                self._files.syncer(where).sync()
            except OSError as e:
                error = spool_error(e, "sync the queue directory")
                for s in group:
                    self._unstage(s)
                    results[s.index] = error
                continue
            for s in group:
                results[s.index] = s.entry

    def _stage(self, index: int, request: CommitRequest) -> _Staged:
        """Write the message (if it is still in memory) and the record into temp files, unsynced."""
        files = self._files
        where, entry = request.where, request.entry
        queue_id = entry.queue_id
        dest, env_tmp, _ = self._places(where, queue_id)
        temp = request.temp if request.temp is not None else self._write_in_memory(queue_id, request.data)
        msg_final = os.path.join(dest, queue_id + MSG)
        staged = _Staged(index, where, temp, env_tmp, None, entry, msg_final, os.path.join(dest, queue_id + ENV))
        try:
            staged.entry = committed = self.committed_entry(
                request, temp.size, entry.message_digest or self._temp_digest(temp))
            env_fd = staged.env_fd = files.ops.open_new(env_tmp)
            staged.record = encode_record(committed)
            files.ops.write(env_fd, staged.record)
            if committed.next_attempt_at or not self._write_time_is_hint:
                # The schedule hint (see the package docstring) in the same clock as received_at.
                files.ops.set_mtime(env_fd, committed.next_attempt_at or committed.received_at)
        except (OSError, SpoolError) as e:
            self._unstage(staged)
            if isinstance(e, SpoolError):
                raise
            raise spool_error(e, "write the envelope record") from None
        return staged

    def committed_entry(self, request: CommitRequest, size: int, message_digest: str) -> SpoolEntry:
        """
        ``request``'s entry as its commit stores it, from the two things only the commit learns
        (the message's size and digest): the commit process answers with those, and its parent
        builds the entry here instead of unpickling one per message.
        """
        entry = request.entry
        history = entry.history
        if request.where == "held":
            # Noted like an admin hold, so a release extends the queue lifetime by the time held.
            history = history + (AttemptRecord(entry.received_at, HOLD_NOTE),)
        dest = self._destinations[request.where]
        return _committed_entry(entry, history, os.path.join(dest, entry.queue_id + MSG), size, message_digest)

    def _places(self, where: str, queue_id: str) -> tuple[str, str, str]:
        """A commit's destination directory and the temp paths of its record and message."""
        dest = self._destinations[where]
        if where == "incoming":
            return dest, os.path.join(dest, f".{queue_id}.env.tmp"), os.path.join(dest, f".{queue_id}.msg.tmp")
        return dest, self._files.tmp_path(queue_id, ENV), self._files.tmp_path(queue_id, MSG)

    def _write_in_memory(self, queue_id: str, data: Optional[bytes]) -> TempMessage:
        temp = self.create_temp(queue_id)
        try:
            self.append(temp, [data or b""])
        except SpoolError:
            self.discard(temp)
            raise
        return temp

    def _close_staged(self, s: _Staged) -> None:
        ops = self._files.ops
        if s.env_fd is not None:
            fd, s.env_fd = s.env_fd, None
            ops.close(fd)
        if s.temp.fd is not None:
            fd, s.temp.fd = s.temp.fd, None
            ops.close(fd)

    def _closed_or_undone(self, s: _Staged, results: list[Any]) -> bool:
        """Close a commit's files; if that fails (a late write error), the commit fails alone."""
        try:
            self._close_staged(s)
        except OSError as e:
            self._unstage(s)
            results[s.index] = spool_error(e, "close the message file")
            return False
        return True

    def _unstage(self, s: _Staged) -> None:
        """Remove every trace of a staged commit (record first: without it nothing counts)."""
        ops = self._files.ops
        for fd in (s.temp.fd, s.env_fd):
            if fd is not None:
                quietly(ops.close, fd)
        s.temp.fd = s.env_fd = None
        for path in reversed(s.renamed):
            quietly(ops.unlink, path)
        for path in (s.temp.path, s.env_tmp):
            if path not in s.renamed:
                quietly(ops.unlink, path)
        s.renamed = []

    def undo(self, requests: list[CommitRequest], journal: Optional[str] = None, watch: Optional[int] = None) -> None:
        """
        Remove whatever a commit of ``requests`` that was cut short left: their entries if they
        were renamed into place (record first: without it nothing counts), their temp files, and
        the in-flight markers of their batches.  For commits made elsewhere whose answer never
        came (L{gateway.spool.commit_process}): their clients are told to send them again.  The
        ``journal`` of the process that ended goes too, after the same flush, which makes the
        entries it answered for durable in place (and it must not bring the undone ones back);
        ``watch`` is a descriptor opened before that process started (L{inflight.settle}).
        """
        ops = self._files.ops
        for request in requests:
            queue_id = request.entry.queue_id
            dest, env_tmp, msg_tmp = self._places(request.where, queue_id)
            for path in (os.path.join(dest, queue_id + ENV), os.path.join(dest, queue_id + MSG), env_tmp, msg_tmp):
                quietly(ops.unlink, path)
        # The removals are flushed before the markers go (and before the clients hear 451): an
        # entry the child had flushed must not come back after a power loss, unmarked, and be
        # delivered beside the client's retry.
        ids = {request.entry.queue_id for request in requests}
        # Without a descriptor from before the process started, its journal waits for start-up.
        settled = inflight.own_markers_within(self._files, ids) + ([journal] if journal and watch is not None else [])
        inflight.settle(ops, self._files.layout.tmp, settled, watch)  # if the flush fails, they stay for start-up

    def _temp_digest(self, temp: TempMessage) -> str:
        if temp.digest_valid:
            return f"{DIGEST_ALGORITHM}:{temp.hasher.hexdigest()}"
        try:
            return file_digest(temp.path)
        except OSError as e:
            raise spool_error(e, "digest the message") from None

    # -- moving a written entry into the queue ---------------------------------------------

    def move_into_queue(self, entry: SpoolEntry, source_msg: str, what: str, set_mtime: bool = False) -> None:
        """
        Queue ``entry`` whose message is at ``source_msg`` (incoming/, failed/, held/): the new
        record is written and fsynced under tmp/ first, then the message and the record are
        renamed into queue/ and queue/ is fsynced, so the entry is queued whole or not at all
        (recovery finishes or undoes a half-done move).  Used by sendmail imports, requeue and
        release alike.
        """
        files = self._files
        tmp = None
        try:
            tmp = write_temp_record(files, entry, set_mtime)
            if source_msg != entry.message_path:
                files.ops.rename(source_msg, entry.message_path)
            files.ops.rename(tmp, SpoolLayout.path(files.layout.queue, entry.queue_id, ENV))
            files.queue_sync.sync()
        except OSError as e:
            if tmp is not None:
                quietly(files.ops.unlink, tmp)
            raise spool_error(e, f"{what} {entry.queue_id}") from None


__all__ = [
    "Acceptor", "TempMessage", "CommitRequest", "CommitResult", "DIGEST_ALGORITHM", "HOLD_NOTE", "file_digest",
    "write_temp_record",
]
