"""
The spool's on-disk layout and every blocking operation on it, in one place.

The daemon runs these functions in its spool thread pool (through L{gateway.spool.store});
the sendmail and queue commands run them directly.  Keeping a single implementation is what
guarantees that all three agree on the formats and on the crash-safety rules below.

Layout (directories 0700, files 0600)::

    <spool>/
      lock                 flock()ed by the running daemon; holds its pid
      tmp/                 the daemon's files being written: <tag>.<id>.msg / .env / ...
      queue/<id>.msg       the message: RFC 5322 bytes with CRLF line ends, exactly as handed
                           to the spool writer (gateway headers included), nothing added
      queue/<id>.env       the envelope/state record (format: L{gateway.spool.record});
                           its mtime is set to the next attempt time (a hint, see below)
      incoming/            the sendmail command's drop box: .<id>.*.tmp while writing, then
                           <id>.msg + <id>.env; also control requests <action>-<target>.ctl
                           from the queue command while the daemon runs
      failed/<id>.msg/.env/.reason   permanently failed (reason: human-readable text)
      archive/<id>.msg/.env          delivered, when archive_delivered is on
      held/<id>.msg/.env   put on hold by the admin (graphsmtp-queue hold): outside queue/, so
                           the runner never sees, attempts or expires it until released
      quarantine/          anything unreadable, moved aside with a log line, never deleted

Completeness rule: **the record's presence marks a complete entry.**  Every protocol is
ordered so that a crash at any instant leaves either no entry or a whole one:

- accept (daemon and sendmail): write the message to a temp file and the record to another,
  make both durable; rename the message into place, then the record; fsync the directory.
  Only then is the message acknowledged (250, or exit status 0).  A message file without a
  record was never acknowledged and is deleted at recovery.  The daemon group-commits
  (L{SpoolDisk.publish_batch}, L{gateway.spool.group_commit}): every message whose DATA ended
  while the previous batch was flushing is written, then *one* data flush covers them all
  (``syncfs`` on Linux ≥ 5.8, else one ``fdatasync`` per file), then all the renames, then one
  fsync per destination directory — the same order for each message, fewer device flushes.
  With ``[queue] hold_new`` the destination is held/ instead of queue/ (the record's history
  notes the hold, as an admin hold would).  The on-disk format is unchanged by group commit:
  entries written by older gateways load and deliver as before.
- import (sendmail's entries, done by the daemon): write the record into tmp/, rename the
  message incoming/ → queue/, rename the record into queue/, fsync queue/, unlink the
  incoming record.  Recovery finishes a half-done import (incoming record + queue message).
- state change: write a new record to tmp/, fsync, rename over the old one (old or new state
  survives, never a mix).
- delivered: unlink the record first, then the message (or rename both into archive/,
  message first).  A crash in between leaves an orphan message, deleted at recovery — or a
  second delivery, never a lost one.
- failed: write failed/<id>.reason, move the message to failed/, write the final record into
  failed/, unlink the queued record, fsync failed/.  A queued record whose message is in
  failed/ (or archive/) is a move interrupted by a crash, and recovery completes it.
- requeue (admin): new record in tmp/, message failed/ → queue/, record into queue/, fsync,
  then the failed/ leftovers are removed.  A queued message without record whose record is
  still in failed/ is moved back to failed/ at recovery.
- hold (admin): message queue/ → held/, record written into held/, queued record unlinked,
  fsync held/.  A queued record whose message is in held/ is a hold interrupted by a crash,
  and recovery completes it (as for failed/).
- release (admin): new record in tmp/ (queue lifetime extended by the time held), message
  held/ → queue/, record into queue/, fsync, then the held/ record is removed.  A queued
  message without record whose record is still in held/ goes back to held/ at recovery.

Scheduling hint: a state change sets the record's mtime to ``next_attempt_at``, so start-up
can build the whole schedule from one ``stat`` per entry instead of parsing 100,000 JSON
records.  The record stays authoritative: the queue runner loads it when the hint says "due"
and reschedules if the real time is later, so a wrong mtime costs one early look, nothing more.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import os
import pwd
import threading
import time
from typing import Any, Callable, Iterable, Optional

import attrs

from gateway.spool.dirsync import DirectorySyncer
from gateway.spool.entry import AttemptRecord, SpoolEntry
from gateway.spool.fileops import DIR_MODE, FileOps, quietly, spool_error
from gateway.spool.interfaces import SpoolError
from gateway.spool.queueid import is_queue_id
from gateway.spool.record import RecordError, decode_record, encode_record

MSG = ".msg"
ENV = ".env"
REASON = ".reason"
CONTROL = ".ctl"
CONTROL_ACTIONS = ("retry", "delete", "requeue", "hold", "release")
# Actions whose target may be "all" as well as one queue id.
_ALL_ACTIONS = ("retry", "hold", "release")
ALL = "all"
HOLD_NOTE = "held by admin"
RELEASE_NOTE = "released by admin"
_HISTORY_LIMIT = 50
# A sendmail command may legitimately be half-way through writing into incoming/ while the
# daemon starts; its leftovers are only treated as abandoned after this long.
INCOMING_GRACE = 3600.0
ABANDONED_TEMP_AGE = 86400.0


class EntryMissing(KeyError):
    """The queue has no (readable) entry with this id any more."""


class EntryQuarantined(EntryMissing):
    """The entry was unreadable and has just been moved to quarantine/."""

    def __init__(self, queue_id: str, reason: str) -> None:
        super().__init__(queue_id)
        self.queue_id = queue_id
        self.reason = reason


class SpoolBusy(SpoolError):
    """Another process (a running daemon) holds the spool lock."""

    def __init__(self, message: str, pid: Optional[int]) -> None:
        super().__init__(message)
        self.pid = pid


@attrs.frozen
class SpoolLayout:
    """Path arithmetic only; no I/O."""

    root: str

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, "tmp")

    @property
    def queue(self) -> str:
        return os.path.join(self.root, "queue")

    @property
    def incoming(self) -> str:
        return os.path.join(self.root, "incoming")

    @property
    def failed(self) -> str:
        return os.path.join(self.root, "failed")

    @property
    def archive(self) -> str:
        return os.path.join(self.root, "archive")

    @property
    def quarantine(self) -> str:
        return os.path.join(self.root, "quarantine")

    @property
    def held(self) -> str:
        return os.path.join(self.root, "held")

    @property
    def lock(self) -> str:
        return os.path.join(self.root, "lock")

    def directories(self) -> tuple[str, ...]:
        return (self.tmp, self.queue, self.incoming, self.failed, self.archive, self.quarantine, self.held)

    @staticmethod
    def path(directory: str, queue_id: str, suffix: str) -> str:
        return os.path.join(directory, queue_id + suffix)


DIGEST_ALGORITHM = "sha256"
_DIGEST_READ = 1024 * 1024


def file_digest(path: str) -> str:
    """``"sha256:<hex>"`` of a whole file, read in blocks (blocking: call it in a thread)."""
    with open(path, "rb") as f:
        return f"{DIGEST_ALGORITHM}:{hashlib.file_digest(f, DIGEST_ALGORITHM).hexdigest()}"


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


@attrs.frozen
class CommitRequest:
    """
    One message to accept (L{SpoolDisk.publish_batch}): ``entry`` as committed (its
    ``message_path`` and ``size`` are filled in), and the message either already in ``temp``
    (streamed, large) or still in memory as ``data`` (small: written by the commit itself, so
    it costs no thread hand-off of its own).  ``where``: "queue", "held" or "incoming".
    """

    entry: SpoolEntry
    where: str = "queue"
    temp: Optional[TempMessage] = None
    data: Optional[bytes] = None


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
    renamed: list = attrs.field(factory=list)


@attrs.frozen
class ControlRequest:
    """An admin request dropped by the queue command: ``action`` on ``target`` (id or "all")."""

    action: str
    target: str

    @property
    def file_name(self) -> str:
        return f"{self.action}-{self.target}{CONTROL}"

    @classmethod
    def from_file_name(cls, name: str) -> Optional["ControlRequest"]:
        if not name.endswith(CONTROL) or "-" not in name:
            return None
        action, target = name[: -len(CONTROL)].split("-", 1)
        if action not in CONTROL_ACTIONS or not (is_queue_id(target) or (target == ALL and action in _ALL_ACTIONS)):
            return None
        return cls(action, target)


@attrs.frozen
class Quarantined:
    """One thing moved to quarantine/, reported so the reactor thread can log it."""

    name: str
    reason: str


@attrs.define
class IncomingScan:
    """What one pass over incoming/ found: entries now in the queue, and admin requests."""

    entries: list = attrs.field(factory=list)
    requests: list = attrs.field(factory=list)
    quarantined: list = attrs.field(factory=list)
    errors: list = attrs.field(factory=list)


@attrs.define
class RecoveryReport:
    """
    What start-up recovery found.  ``schedule`` is ``(due_hint, queue_id)`` for every complete
    entry, built from names and one stat each — the runner loads records lazily.
    """

    schedule: list = attrs.field(factory=list)
    imported: list = attrs.field(factory=list)
    removed: list = attrs.field(factory=list)
    completed_moves: list = attrs.field(factory=list)
    quarantined: list = attrs.field(factory=list)
    errors: list = attrs.field(factory=list)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class SpoolDisk:
    """
    Blocking spool operations.  Thread-safe for distinct queue ids; the daemon never works on
    the same id from two threads at once (one writer per message, one runner task per entry).

    ``tag`` marks this process's temp files in tmp/, so recovery removes only files that no
    live writer of this process owns.
    """

    def __init__(self, root: str, ops: Optional[FileOps] = None, tag: Optional[str] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.layout = SpoolLayout(os.path.abspath(root))
        self.ops = ops if ops is not None else FileOps()
        self.tag = tag or os.urandom(4).hex()
        #: Stamped into the provenance of what this spool accepts (intake, sendmail imports).
        self.node: Optional[str] = None
        self._now = clock
        self.queue_sync = DirectorySyncer(self.ops, self.layout.queue)
        self.incoming_sync = DirectorySyncer(self.ops, self.layout.incoming)
        self.failed_sync = DirectorySyncer(self.ops, self.layout.failed)
        self.held_sync = DirectorySyncer(self.ops, self.layout.held)
        self._counter = itertools.count()
        self._committing: set[str] = set()
        self._committing_lock = threading.Lock()
        self._lock_fd: Optional[int] = None
        self._lock_mutex = threading.Lock()  # recovery and the first intake may both lock
        self.lock_wait = 10.0

    # -- set-up and locking --------------------------------------------------------------

    def ensure_directories(self) -> None:
        """Create the layout (0700) if missing.  Existing directories keep their modes."""
        try:
            os.makedirs(self.layout.root, mode=DIR_MODE, exist_ok=True)
            for d in self.layout.directories():
                os.makedirs(d, mode=DIR_MODE, exist_ok=True)
        except OSError as e:
            raise spool_error(e, f"create the spool directories under {self.layout.root}") from None

    def acquire_lock(self, wait: float = 0.0) -> None:
        """
        Take the spool lock; L{SpoolBusy} if another process keeps it for more than ``wait``
        seconds (the daemon waits a little: the queue command holds it briefly for offline
        changes).  Blocking: call from a thread.
        """
        with self._lock_mutex:
            self._acquire_lock(wait)

    def _acquire_lock(self, wait: float) -> None:
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise spool_error(e, f"open {self.layout.lock}") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                busy = e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
                if busy and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                pid = self._read_pid(fd)
                os.close(fd)
                if busy:
                    raise SpoolBusy(
                        f"spool {self.layout.root} is in use by another graphsmtp process"
                        + (f" (pid {pid})" if pid else ""), pid,
                    ) from None
                raise spool_error(e, f"lock {self.layout.lock}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def share_lock(self, fd: int) -> None:
        """
        An intake worker process (L{gateway.workers}): hold the lock through ``fd``, the main
        process's own lock descriptor inherited at spawn.  flock() belongs to the open file
        description, so the worker holds the very lock the main took — no second daemon or
        offline queue command can start while any process of this gateway lives — and intake
        never tries (and fails) to take it exclusively for itself.
        """
        with self._lock_mutex:
            if os.fstat(fd).st_ino != os.stat(self.layout.lock).st_ino:
                raise SpoolError(f"descriptor {fd} is not the lock of spool {self.layout.root}")
            self._lock_fd = fd

    @property
    def lock_descriptor(self) -> Optional[int]:
        """The descriptor through which this process holds the lock (None: not held)."""
        return self._lock_fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for syncer in (self.queue_sync, self.incoming_sync, self.failed_sync, self.held_sync):
            syncer.close()

    def daemon_pid(self) -> Optional[int]:
        """The pid of the daemon holding the lock, or None when no daemon runs."""
        try:
            fd = os.open(self.layout.lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return self._read_pid(fd) or -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _read_pid(fd: int) -> Optional[int]:
        try:
            return int(os.pread(fd, 32, 0).strip() or 0) or None
        except (OSError, ValueError):
            return None

    # -- accepting a message ---------------------------------------------------------------

    def _tmp_path(self, queue_id: str, suffix: str) -> str:
        return os.path.join(self.layout.tmp, f"{self.tag}.{queue_id}{suffix}")

    def create_temp(self, queue_id: str, incoming: bool = False) -> TempMessage:
        """Open a new temp message file (tmp/ for the daemon, incoming/ for sendmail)."""
        path = (os.path.join(self.layout.incoming, f".{queue_id}.msg.tmp") if incoming
                else self._tmp_path(queue_id, MSG))
        try:
            fd = self.ops.open_new(path)
        except OSError as e:
            raise spool_error(e, "create a message file") from None
        return TempMessage(queue_id, path, fd)

    def append(self, temp: TempMessage, chunks: Iterable[bytes]) -> None:
        data = b"".join(chunks)
        if not data:
            return
        try:
            self.ops.write(temp.fd, data)
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
        # The body was digested with the old header in front; publish() digests the file again.
        # Only messages both streamed (larger than the writer's chunk) and edited by a policy pay
        # that second read.
        temp.digest_valid = False
        try:
            if len(header_section) == old_length:
                self.ops.pwrite(temp.fd, header_section, 0)
                return
            new_path = temp.path + ".h"
            new_fd = self.ops.open_new(new_path)
            try:
                self.ops.write(new_fd, header_section)
                self.ops.copy_range(temp.fd, new_fd, old_length, temp.size - old_length)
            except OSError:
                quietly(self.ops.close, new_fd)
                quietly(self.ops.unlink, new_path)
                raise
            self.ops.close(temp.fd)
            quietly(self.ops.unlink, temp.path)
            temp.fd, temp.path = new_fd, new_path
            temp.size = len(header_section) + temp.size - old_length
        except OSError as e:
            raise spool_error(e, "rewrite the message headers") from None

    def publish(self, temp: TempMessage, entry: SpoolEntry, incoming: bool = False,
                held: bool = False) -> SpoolEntry:
        """
        The acceptance protocol (see module docstring) for one message.  Returns ``entry``
        with its final message path; on any failure removes every trace and raises
        L{SpoolError}.  ``held`` commits into held/ instead of queue/ (``[queue] hold_new``).
        """
        where = "incoming" if incoming else "held" if held else "queue"
        result = self.publish_batch([CommitRequest(entry, where, temp=temp)])[0]
        if isinstance(result, SpoolError):
            raise result
        return result

    def publish_batch(self, requests: list) -> list:
        """
        Group commit: accept every L{CommitRequest} in ``requests`` with one data flush and
        one directory fsync per destination for all of them, in the order of the acceptance
        protocol (all data and records durable → renames, message before record → directory
        fsync).  Returns one result per request, in order: the stored L{SpoolEntry}, or the
        L{SpoolError} that request failed with (its files are gone).  One bad request (a full
        disk while writing it) fails alone; a failed flush fails the whole batch.
        """
        results: list = [None] * len(requests)
        staged: list[_Staged] = []
        for index, request in enumerate(requests):
            with self._committing_lock:
                self._committing.add(request.entry.queue_id)
            try:
                staged.append(self._stage(index, request))
            except SpoolError as e:
                results[index] = e
        try:
            if staged:
                try:
                    self.ops.sync_files([fd for s in staged for fd in (s.temp.fd, s.env_fd)])
                except OSError as e:
                    error = spool_error(e, "sync the message to disk")
                    for s in staged:
                        self._unstage(s)
                        results[s.index] = error
                    staged = []
            by_directory: dict[str, list[_Staged]] = {}
            for s in staged:
                stage = "move the message into the queue"
                try:
                    self._close_staged(s)
                    self.ops.rename(s.temp.path, s.msg_final)
                    s.renamed.append(s.msg_final)
                    self.ops.rename(s.env_tmp, s.env_final)
                    s.renamed.append(s.env_final)
                except OSError as e:
                    self._unstage(s)
                    results[s.index] = spool_error(e, stage)
                    continue
                by_directory.setdefault(s.where, []).append(s)
            for where, group in by_directory.items():
                try:
                    self._syncers[where].sync()
                except OSError as e:
                    error = spool_error(e, "sync the queue directory")
                    for s in group:
                        self._unstage(s)
                        results[s.index] = error
                    continue
                for s in group:
                    results[s.index] = s.entry
        finally:
            with self._committing_lock:
                for request in requests:
                    self._committing.discard(request.entry.queue_id)
        return results

    def _stage(self, index: int, request: "CommitRequest") -> "_Staged":
        """Write the message (if it is still in memory) and the record into temp files, unsynced."""
        where, entry = request.where, request.entry
        if where == "incoming":
            dest = self.layout.incoming
            env_tmp = os.path.join(self.layout.incoming, f".{entry.queue_id}.env.tmp")
        else:
            dest = self.layout.held if where == "held" else self.layout.queue
            env_tmp = self._tmp_path(entry.queue_id, ENV)
        if where == "held":
            # Noted like an admin hold, so a release extends the queue lifetime by the time held.
            entry = attrs.evolve(entry, history=entry.history + (AttemptRecord(entry.received_at, HOLD_NOTE),))
        temp = request.temp
        if temp is None:
            temp = self.create_temp(entry.queue_id)
            try:
                self.append(temp, [request.data or b""])
            except SpoolError:
                self.discard(temp)
                raise
        staged = _Staged(index, where, temp, env_tmp, None, entry,
                         SpoolLayout.path(dest, entry.queue_id, MSG), SpoolLayout.path(dest, entry.queue_id, ENV))
        try:
            staged.entry = attrs.evolve(entry, message_path=staged.msg_final, size=temp.size,
                                        message_digest=entry.message_digest or self._temp_digest(temp))
            staged.env_fd = self.ops.open_new(env_tmp)
            self.ops.write(staged.env_fd, encode_record(staged.entry))
            # The schedule hint (see module docstring) in the same clock as received_at.
            self.ops.set_mtime(staged.env_fd, staged.entry.next_attempt_at or staged.entry.received_at)
        except (OSError, SpoolError) as e:
            self._unstage(staged)
            if isinstance(e, SpoolError):
                raise
            raise spool_error(e, "write the envelope record") from None
        return staged

    def _close_staged(self, s: "_Staged") -> None:
        if s.env_fd is not None:
            fd, s.env_fd = s.env_fd, None
            self.ops.close(fd)
        if s.temp.fd is not None:
            fd, s.temp.fd = s.temp.fd, None
            self.ops.close(fd)

    def _unstage(self, s: "_Staged") -> None:
        """Remove every trace of a staged commit (record first: without it nothing counts)."""
        for fd in (s.temp.fd, s.env_fd):
            if fd is not None:
                quietly(self.ops.close, fd)
        s.temp.fd = s.env_fd = None
        for path in reversed(s.renamed):
            quietly(self.ops.unlink, path)
        for path in (s.temp.path, s.env_tmp):
            if path not in s.renamed:
                quietly(self.ops.unlink, path)
        s.renamed = []

    @property
    def _syncers(self) -> dict:
        return {"queue": self.queue_sync, "held": self.held_sync, "incoming": self.incoming_sync}

    def _temp_digest(self, temp: TempMessage) -> str:
        if temp.digest_valid:
            return f"{DIGEST_ALGORITHM}:{temp.hasher.hexdigest()}"
        try:
            return file_digest(temp.path)
        except OSError as e:
            raise spool_error(e, "digest the message") from None

    def discard(self, temp: TempMessage) -> None:
        """Throw away an unfinished message (client vanished, message refused)."""
        if temp.fd is not None:
            quietly(self.ops.close, temp.fd)
            temp.fd = None
        quietly(self.ops.unlink, temp.path)

    # -- reading and changing entries ------------------------------------------------------

    def load(self, queue_id: str, directory: Optional[str] = None, quarantine: bool = True) -> SpoolEntry:
        """
        The current entry; L{EntryMissing} if gone, L{EntryQuarantined} if unreadable.  Readers
        that do not own the queue (the queue command while a daemon runs) pass
        ``quarantine=False``: what looks broken to them may be a move the daemon is making.
        """
        directory = directory or self.layout.queue
        if not is_queue_id(queue_id):
            raise EntryMissing(queue_id)
        env_path = SpoolLayout.path(directory, queue_id, ENV)
        msg_path = SpoolLayout.path(directory, queue_id, MSG)
        try:
            data = self.ops.read_file(env_path)
        except FileNotFoundError:
            raise EntryMissing(queue_id) from None
        except OSError as e:
            raise spool_error(e, f"read the record of {queue_id}") from None
        try:
            entry = decode_record(data, msg_path, queue_id)
            size = os.stat(msg_path).st_size
        except RecordError as e:
            reason = f"unreadable record: {e}"
        except FileNotFoundError:
            reason = "message file missing"
        else:
            if size == entry.size:
                return entry
            reason = f"message file is {size} bytes, record says {entry.size}"
        if directory == self.layout.queue and quarantine:
            self._quarantine_entry(directory, queue_id)
            raise EntryQuarantined(queue_id, reason)
        raise EntryMissing(queue_id)

    def write_record(self, entry: SpoolEntry) -> SpoolEntry:
        """Atomically replace the queued record with ``entry``'s state."""
        final = SpoolLayout.path(self.layout.queue, entry.queue_id, ENV)
        if not os.path.exists(entry.message_path):
            raise EntryMissing(entry.queue_id)
        self._write_record_file(entry, final, set_mtime=True)
        try:
            self.queue_sync.sync()
        except OSError as e:
            raise spool_error(e, "sync the queue directory") from None
        return entry

    def _write_record_file(self, entry: SpoolEntry, final: str, set_mtime: bool) -> None:
        tmp = self._tmp_path(entry.queue_id, f".{next(self._counter)}{ENV}")
        fd = None
        try:
            fd = self.ops.open_new(tmp)
            self.ops.write(fd, encode_record(entry))
            if set_mtime and entry.next_attempt_at > 0:
                # The schedule hint read at start-up (see SpoolEntry.due_hint).
                self.ops.set_mtime(fd, entry.due_hint)
            self.ops.sync_file(fd)
            self.ops.close(fd)
            fd = None
            self.ops.rename(tmp, final)
        except OSError as e:
            if fd is not None:
                quietly(self.ops.close, fd)
            quietly(self.ops.unlink, tmp)
            raise spool_error(e, f"write the record of {entry.queue_id}") from None

    def remove(self, entry: SpoolEntry, archive: bool = False) -> None:
        """Delivered: delete (record first) or move to archive/ (message first)."""
        q = self.layout.queue
        try:
            if archive:
                self.ops.rename(SpoolLayout.path(q, entry.queue_id, MSG),
                                SpoolLayout.path(self.layout.archive, entry.queue_id, MSG))
                self.ops.rename(SpoolLayout.path(q, entry.queue_id, ENV),
                                SpoolLayout.path(self.layout.archive, entry.queue_id, ENV))
                return
            self._unlink_if_present(SpoolLayout.path(q, entry.queue_id, ENV))
            self._unlink_if_present(SpoolLayout.path(q, entry.queue_id, MSG))
        except OSError as e:
            raise spool_error(e, f"remove {entry.queue_id}") from None

    def _unlink_if_present(self, path: str) -> None:
        try:
            self.ops.unlink(path)
        except FileNotFoundError:
            pass

    def fail(self, entry: SpoolEntry, reason: str) -> SpoolEntry:
        """Move to failed/ with a .reason file; returns the entry as stored in failed/."""
        f, q, qid = self.layout.failed, self.layout.queue, entry.queue_id
        failed_entry = attrs.evolve(entry, message_path=SpoolLayout.path(f, qid, MSG))
        text = (
            f"queue id: {qid}\n"
            f"failed at: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self._now()))}\n"
            f"reason: {_one_line(reason)}\n"
            f"attempts: {entry.attempts}\n"
        ) + "".join(
            f"attempt at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(h.at))}: {_one_line(h.reason)}\n"
            for h in entry.history
        )
        reason_tmp = self._tmp_path(qid, f".{next(self._counter)}{REASON}")
        fd = None
        try:
            fd = self.ops.open_new(reason_tmp)
            self.ops.write(fd, text.encode("utf-8", "replace"))
            self.ops.sync_file(fd)
            self.ops.close(fd)
            fd = None
            self.ops.rename(reason_tmp, SpoolLayout.path(f, qid, REASON))
            self.ops.rename(SpoolLayout.path(q, qid, MSG), failed_entry.message_path)
            self._write_record_file(failed_entry, SpoolLayout.path(f, qid, ENV), set_mtime=False)
            self._unlink_if_present(SpoolLayout.path(q, qid, ENV))
            self.failed_sync.sync()
        except OSError as e:
            if fd is not None:
                quietly(self.ops.close, fd)
            quietly(self.ops.unlink, reason_tmp)
            raise spool_error(e, f"move {qid} to failed/") from None
        return failed_entry

    def delete(self, queue_id: str) -> bool:
        """Admin delete of a queued entry (record first).  False if it was not queued."""
        if not is_queue_id(queue_id):
            return False
        env = SpoolLayout.path(self.layout.queue, queue_id, ENV)
        try:
            self.ops.unlink(env)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise spool_error(e, f"delete {queue_id}") from None
        self._unlink_if_present(SpoolLayout.path(self.layout.queue, queue_id, MSG))
        return True

    def requeue(self, queue_id: str) -> SpoolEntry:
        """
        Put a failed entry back in the queue, due now, with a fresh queue lifetime (the old
        start is kept in the history line).  The attempt count is kept: it is the message's
        history, and an admin reading "attempts: 0" would think it was never tried.
        """
        f, q = self.layout.failed, self.layout.queue
        old = self.load(queue_id, directory=f)
        now = self._now()
        note = AttemptRecord(now, f"requeued by admin; first received {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(old.received_at))}")
        entry = attrs.evolve(
            old, message_path=SpoolLayout.path(q, queue_id, MSG), received_at=now,
            next_attempt_at=0.0, history=old.history + (note,),
        )
        self._move_into_queue(entry, SpoolLayout.path(f, queue_id, MSG), "requeue")
        try:
            self._unlink_if_present(SpoolLayout.path(f, queue_id, ENV))
            self._unlink_if_present(SpoolLayout.path(f, queue_id, REASON))
        except OSError as e:
            raise spool_error(e, f"requeue {queue_id}") from None
        return entry

    # -- hold (admin) ----------------------------------------------------------------------

    def hold(self, queue_id: str) -> SpoolEntry:
        """
        Move a queued entry to held/ (protocol in the module docstring).  L{EntryMissing} if
        it is not queued.  The caller must own the queue (the daemon, or the queue command
        holding the lock): the runner must not be delivering it meanwhile.
        """
        q, h = self.layout.queue, self.layout.held
        old = self.load(queue_id)
        entry = attrs.evolve(old, message_path=SpoolLayout.path(h, queue_id, MSG),
                             history=(old.history + (AttemptRecord(self._now(), HOLD_NOTE),))[-_HISTORY_LIMIT:])
        try:
            os.makedirs(h, mode=DIR_MODE, exist_ok=True)  # spools made before held/ existed
            self.ops.rename(SpoolLayout.path(q, queue_id, MSG), entry.message_path)
            self._write_record_file(entry, SpoolLayout.path(h, queue_id, ENV), set_mtime=False)
            self._unlink_if_present(SpoolLayout.path(q, queue_id, ENV))
            self.held_sync.sync()
        except OSError as e:
            raise spool_error(e, f"hold {queue_id}") from None
        return entry

    def release(self, queue_id: str) -> SpoolEntry:
        """
        Put a held entry back in the queue with its schedule and attempt count, and its queue
        lifetime extended by the time it was held (a held message never expires while held).
        L{EntryMissing} if it is not held.
        """
        q, h = self.layout.queue, self.layout.held
        old = self.load(queue_id, directory=h)
        now = self._now()
        held_at = next((r.at for r in reversed(old.history) if r.reason == HOLD_NOTE), now)
        held_for = max(0.0, now - held_at)
        note = AttemptRecord(now, f"{RELEASE_NOTE} after {int(held_for)}s on hold; queue lifetime extended by as much")
        entry = attrs.evolve(old, message_path=SpoolLayout.path(q, queue_id, MSG),
                             received_at=old.received_at + held_for,
                             history=(old.history + (note,))[-_HISTORY_LIMIT:])
        self._move_into_queue(entry, SpoolLayout.path(h, queue_id, MSG), "release", set_mtime=True)
        try:
            self._unlink_if_present(SpoolLayout.path(h, queue_id, ENV))
        except OSError as e:
            raise spool_error(e, f"release {queue_id}") from None
        return entry

    # -- quarantine ------------------------------------------------------------------------

    def quarantine(self, entry: SpoolEntry, reason: str) -> str:
        """
        Take a queued entry out of the queue for good, keeping it for an admin: the message,
        then the record, into quarantine/, with ``<id>.reason`` beside them.  Returns the
        quarantine directory.  Raises L{SpoolError} if nothing could be moved (it stays queued).
        """
        qid = entry.queue_id
        text = (f"queue id: {qid}\n"
                f"quarantined at: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self._now()))}\n"
                f"reason: {_one_line(reason)}\n"
                f"digest at intake: {entry.message_digest}\n")
        try:
            self._quarantine_file(SpoolLayout.path(self.layout.queue, qid, MSG))
        except FileNotFoundError:
            pass  # already gone: the record alone must still leave the queue
        except OSError as e:
            raise spool_error(e, f"quarantine {qid}") from None
        try:
            self._quarantine_file(SpoolLayout.path(self.layout.queue, qid, ENV))
        except FileNotFoundError:
            pass
        except OSError as e:
            # A record without its message is quarantined by recovery anyway.
            raise spool_error(e, f"quarantine the record of {qid}") from None
        # The reason is a courtesy for the admin: failing to write it must not keep the entry queued.
        tmp = self._tmp_path(qid, f".{next(self._counter)}{REASON}")
        fd = None
        try:
            fd = self.ops.open_new(tmp)
            self.ops.write(fd, text.encode("utf-8", "replace"))
            self.ops.close(fd)
            fd = None
            self._quarantine_file(tmp, qid + REASON)
        except OSError:
            if fd is not None:
                quietly(self.ops.close, fd)
            quietly(self.ops.unlink, tmp)
        quietly(self.queue_sync.sync)
        return self.layout.quarantine

    def set_draft(self, queue_id: str, draft_id: Optional[str]) -> SpoolEntry:
        """
        Record ``draft_id`` in the queued record of ``queue_id`` (read from disk, so no other
        field is taken from a stale copy); durable when this returns.
        """
        path = SpoolLayout.path(self.layout.queue, queue_id, ENV)
        try:
            data = self.ops.read_file(path)
        except FileNotFoundError:
            raise EntryMissing(queue_id) from None
        except OSError as e:
            raise spool_error(e, f"read the record of {queue_id}") from None
        try:
            entry = decode_record(data, SpoolLayout.path(self.layout.queue, queue_id, MSG), queue_id)
        except RecordError as e:
            raise SpoolError(f"spool could not update the record of {queue_id}: {e}") from None
        return self.write_record(attrs.evolve(entry, draft_id=draft_id))

    def _quarantine_file(self, path: str, name: Optional[str] = None) -> str:
        base = name or os.path.basename(path)
        target = os.path.join(self.layout.quarantine, base)
        n = 0
        while os.path.exists(target):
            n += 1
            target = os.path.join(self.layout.quarantine, f"{base}.{n}")
        self.ops.rename(path, target)
        return target

    def _quarantine_entry(self, directory: str, queue_id: str) -> None:
        # Message first: a record left behind alone would be quarantined again at recovery,
        # a message left alone would be deleted as never acknowledged.
        for suffix in (MSG, ENV):
            path = SpoolLayout.path(directory, queue_id, suffix)
            if os.path.exists(path):
                quietly(self._quarantine_file, path)

    # -- incoming (sendmail) and control requests ------------------------------------------

    def request_control(self, request: ControlRequest) -> str:
        """Drop an admin request for the running daemon (queue command)."""
        path = os.path.join(self.layout.incoming, request.file_name)
        tmp = os.path.join(self.layout.incoming, f".{request.file_name}.{os.getpid()}.tmp")
        fd = self.ops.open_new(tmp)
        self.ops.close(fd)
        self.ops.rename(tmp, path)
        return path

    def scan_incoming(self, take_requests: bool = True) -> IncomingScan:
        """
        Import complete sendmail entries into the queue and (unless ``take_requests`` is
        false) collect and consume control requests.  Cheap when incoming/ is empty (one
        directory listing), so the daemon can poll it.
        """
        scan = IncomingScan()
        inc = self.layout.incoming
        now = self._now()
        try:
            with os.scandir(inc) as it:
                names = {e.name for e in it}
        except FileNotFoundError:
            return scan
        except OSError as e:
            raise spool_error(e, "list incoming/") from None
        for name in sorted(names):
            path = os.path.join(inc, name)
            if name.startswith("."):
                if name.endswith(".tmp") and self._older_than(path, now, ABANDONED_TEMP_AGE):
                    quietly(self.ops.unlink, path)
                continue
            request = ControlRequest.from_file_name(name)
            if request is not None:
                if take_requests and quietly(self.ops.unlink, path) is None:
                    scan.requests.append(request)
                continue
            queue_id, _, suffix = name.partition(".")
            if not is_queue_id(queue_id) or "." + suffix not in (MSG, ENV):
                if self._older_than(path, now, INCOMING_GRACE):
                    if quietly(self._quarantine_file, path) is None:
                        scan.quarantined.append(Quarantined(name, "unknown file in incoming/"))
                continue
            if "." + suffix == MSG:
                if (queue_id + ENV not in names and self._older_than(path, now, INCOMING_GRACE)
                        and not os.path.exists(os.path.join(inc, queue_id + ENV))):
                    # sendmail died between its two renames: never acknowledged.
                    quietly(self.ops.unlink, path)
                continue
            try:
                result = self._import_one(queue_id, queue_id + MSG in names)
            except SpoolError as e:
                # Left in incoming/ (or half-imported, which the next scan finishes); the
                # entries imported so far must still reach the runner.
                scan.errors.append(f"{queue_id}: {e}")
                continue
            if isinstance(result, Quarantined):
                scan.quarantined.append(result)
            elif result is not None:
                scan.entries.append(result)
        return scan

    def _older_than(self, path: str, now: float, age: float) -> bool:
        try:
            return now - os.stat(path).st_mtime > age
        except OSError:
            return False

    def _import_one(self, queue_id: str, message_in_incoming: bool):
        inc, q = self.layout.incoming, self.layout.queue
        inc_env = SpoolLayout.path(inc, queue_id, ENV)
        inc_msg = SpoolLayout.path(inc, queue_id, MSG)
        q_msg = SpoolLayout.path(q, queue_id, MSG)
        q_env = SpoolLayout.path(q, queue_id, ENV)
        if not message_in_incoming and os.path.exists(inc_msg):
            message_in_incoming = True  # renamed in while incoming/ was being listed
        if not message_in_incoming:
            if os.path.exists(q_env):
                quietly(self.ops.unlink, inc_env)  # import finished; only the unlink was lost
                return None
            if not os.path.exists(q_msg):
                quietly(self._quarantine_file, inc_env)
                return Quarantined(queue_id + ENV, "sendmail record without a message")
        source_msg = inc_msg if message_in_incoming else q_msg
        try:
            st = os.stat(inc_env)
            entry = decode_record(self.ops.read_file(inc_env), q_msg, queue_id)
            size = os.stat(source_msg).st_size
        except FileNotFoundError as e:
            reason = f"unreadable sendmail entry: {e}"
        except RecordError as e:
            reason = f"unreadable sendmail entry: {e}"
        except OSError as e:
            # Transient (EMFILE, EIO) or fixable (permissions): the drop-off was acknowledged,
            # so it stays in incoming/ and the next scan tries again.
            raise spool_error(e, f"read sendmail entry {queue_id}") from None
        else:
            if size == entry.size:
                reason = None
            else:
                reason = f"sendmail message is {size} bytes, record says {entry.size}"
        if reason is not None:
            quietly(self._quarantine_file, inc_env)
            quietly(self._quarantine_file, source_msg)
            return Quarantined(queue_id, reason)
        # The file owner, not what the record claims, says which local user submitted it.
        entry = attrs.evolve(entry, provenance=attrs.evolve(
            entry.provenance, listener="sendmail", auth_identity=_owner_name(st.st_uid),
            node=entry.provenance.node or self.node))
        if entry.message_digest is None:
            # Written by an older sendmail command: digest it now, so what is queued from here
            # on is protected like everything else.
            try:
                entry = attrs.evolve(entry, message_digest=file_digest(source_msg))
            except OSError as e:
                raise spool_error(e, f"digest sendmail entry {queue_id}") from None
        self._move_into_queue(entry, source_msg, "import from incoming/")
        quietly(self.ops.unlink, inc_env)
        return entry

    def _move_into_queue(self, entry: SpoolEntry, source_msg: str, what: str, set_mtime: bool = False) -> None:
        """
        Queue ``entry`` whose message is at ``source_msg`` (incoming/, failed/, held/): the new
        record is written and fsynced under tmp/ first, then the message and the record are
        renamed into queue/ and queue/ is fsynced, so the entry is queued whole or not at all
        (recovery finishes or undoes a half-done move).  Used by sendmail imports, requeue and
        release alike.
        """
        tmp = self._tmp_path(entry.queue_id, f".{next(self._counter)}{ENV}")
        fd = None
        try:
            fd = self.ops.open_new(tmp)
            self.ops.write(fd, encode_record(entry))
            if set_mtime and entry.next_attempt_at > 0:
                self.ops.set_mtime(fd, entry.due_hint)  # the schedule hint read at start-up
            self.ops.sync_file(fd)
            self.ops.close(fd)
            fd = None
            if source_msg != entry.message_path:
                self.ops.rename(source_msg, entry.message_path)
            self.ops.rename(tmp, SpoolLayout.path(self.layout.queue, entry.queue_id, ENV))
            self.queue_sync.sync()
        except OSError as e:
            if fd is not None:
                quietly(self.ops.close, fd)
            quietly(self.ops.unlink, tmp)
            raise spool_error(e, f"{what} {entry.queue_id}") from None

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """
        Start-up: lock, create the layout, clear stale temp files, finish interrupted imports
        and moves, delete never-acknowledged halves, quarantine what cannot be an entry, and
        return the schedule hints of everything queued.  Reads names and one stat per entry;
        records are not parsed here (the runner loads them when they are due).
        """
        self.ensure_directories()
        self.acquire_lock(wait=self.lock_wait)
        report = RecoveryReport()
        try:
            self._clear_tmp(report)
            # Requests stay in incoming/ for the runner's first scan, after it has a schedule.
            scan = self.scan_incoming(take_requests=False)
            report.imported.extend(scan.entries)
            report.quarantined.extend(scan.quarantined)
            report.errors.extend(scan.errors)
            self._recover_queue(report)
            self._recover_failed(report)
        except OSError as e:
            raise spool_error(e, "recover the spool") from None
        return report

    def _clear_tmp(self, report: RecoveryReport) -> None:
        prefix = self.tag + "."
        with os.scandir(self.layout.tmp) as it:
            stale = [e.path for e in it if not e.name.startswith(prefix)]
        for path in stale:
            if quietly(self.ops.unlink, path) is None:
                report.removed.append(path)

    def _recover_queue(self, report: RecoveryReport) -> None:
        q = self.layout.queue
        messages: set[str] = set()
        records: dict[str, float] = {}
        odd: list[str] = []
        with os.scandir(q) as it:
            for e in it:
                queue_id, dot, suffix = e.name.partition(".")
                if dot and is_queue_id(queue_id) and "." + suffix == MSG:
                    messages.add(queue_id)
                elif dot and is_queue_id(queue_id) and "." + suffix == ENV:
                    try:
                        records[queue_id] = e.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        records[queue_id] = 0.0
                else:
                    odd.append(e.name)
        for name in odd:
            if quietly(self._quarantine_file, os.path.join(q, name)) is None:
                report.quarantined.append(Quarantined(name, "not a queue file"))
        for queue_id in messages - records.keys():
            self._recover_lone_message(queue_id, report)
        for queue_id, mtime in records.items():
            # A listing is no snapshot: a commit running meanwhile can show its record but not
            # the message renamed in just before it.  Look again before calling it lone.
            if queue_id in messages or os.path.exists(SpoolLayout.path(q, queue_id, MSG)):
                report.schedule.append((mtime, queue_id))
            else:
                self._recover_lone_record(queue_id, report)

    def _recover_lone_message(self, queue_id: str, report: RecoveryReport) -> None:
        q_msg = SpoolLayout.path(self.layout.queue, queue_id, MSG)
        with self._committing_lock:
            if queue_id in self._committing:
                return
        if os.path.exists(SpoolLayout.path(self.layout.queue, queue_id, ENV)):
            return  # a commit finished while we were listing
        if os.path.exists(SpoolLayout.path(self.layout.incoming, queue_id, ENV)):
            return  # a half-done import of a sendmail message: the next incoming scan finishes it
        for where, label, what in ((self.layout.failed, "failed/", "requeue"), (self.layout.held, "held/", "release")):
            if os.path.exists(SpoolLayout.path(where, queue_id, ENV)) and not os.path.exists(
                    SpoolLayout.path(where, queue_id, MSG)):
                self.ops.rename(q_msg, SpoolLayout.path(where, queue_id, MSG))
                report.completed_moves.append(f"{queue_id}: interrupted {what} undone, back in {label}")
                return
        if quietly(self.ops.unlink, q_msg) is None:
            report.removed.append(q_msg)

    def _recover_lone_record(self, queue_id: str, report: RecoveryReport) -> None:
        q_env = SpoolLayout.path(self.layout.queue, queue_id, ENV)
        for where, label in ((self.layout.failed, "failed/"), (self.layout.archive, "archive/"),
                             (self.layout.held, "held/")):
            if os.path.exists(SpoolLayout.path(where, queue_id, MSG)):
                target = SpoolLayout.path(where, queue_id, ENV)
                if os.path.exists(target):
                    self.ops.unlink(q_env)
                else:
                    self.ops.rename(q_env, target)
                report.completed_moves.append(f"{queue_id}: interrupted move to {label} completed")
                return
        if quietly(self._quarantine_file, q_env) is None:
            report.quarantined.append(Quarantined(queue_id + ENV, "record without a message file"))

    def _recover_failed(self, report: RecoveryReport) -> None:
        for f in (self.layout.failed, self.layout.held):
            with os.scandir(f) as it:
                names = {e.name for e in it}
            for name in names:
                queue_id, _, suffix = name.partition(".")
                if "." + suffix == ENV and queue_id + MSG not in names and os.path.exists(
                        SpoolLayout.path(self.layout.queue, queue_id, ENV)):
                    # requeue/release finished except for clearing failed/ or held/
                    quietly(self.ops.unlink, os.path.join(f, name))
                    quietly(self.ops.unlink, SpoolLayout.path(f, queue_id, REASON))

    # -- listings (queue command) ----------------------------------------------------------

    def queue_ids(self, directory: Optional[str] = None) -> list[str]:
        """Sorted ids with a record in ``directory`` (default the queue)."""
        directory = directory or self.layout.queue
        with os.scandir(directory) as it:
            ids = [e.name[: -len(ENV)] for e in it if e.name.endswith(ENV) and is_queue_id(e.name[: -len(ENV)])]
        return sorted(ids)

    def failure_reason(self, queue_id: str) -> str:
        try:
            text = self.ops.read_file(SpoolLayout.path(self.layout.failed, queue_id, REASON)).decode("utf-8", "replace")
        except OSError:
            return ""
        for line in text.splitlines():
            if line.startswith("reason: "):
                return line[len("reason: "):]
        return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


__all__ = [
    "SpoolDisk", "SpoolLayout", "TempMessage", "CommitRequest", "ControlRequest", "IncomingScan", "RecoveryReport",
    "Quarantined", "EntryMissing", "EntryQuarantined", "SpoolBusy", "MSG", "ENV", "REASON",
]
