"""
Where the spool keeps things, and the lock that says which process owns it.

The layout itself (directories, file names, modes) and why it is safe are described once, in
the L{gateway.spool} package docstring.  This module is path arithmetic (L{SpoolLayout}), the
per-process context every other spool module works through (L{SpoolFiles}), and the spool
lock (L{SpoolLock}).  Everything that touches the disk here is blocking: spool threads, or the
sendmail and queue commands.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import time
from typing import Callable, Optional

import attrs

from gateway.spool.dirsync import DirectorySyncer
from gateway.spool.fileops import DIR_MODE, FileOps, quietly, spool_error
from gateway.spool.interfaces import SpoolError

MSG = ".msg"
ENV = ".env"
REASON = ".reason"


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

    def destination(self, where: str) -> str:
        """The directory a commit bound for ``where`` ("queue", "held" or "incoming") lands in."""
        return {"queue": self.queue, "held": self.held, "incoming": self.incoming}[where]

    @staticmethod
    def path(directory: str, queue_id: str, suffix: str) -> str:
        return os.path.join(directory, queue_id + suffix)


class SpoolFiles:
    """
    The spool as one process works on it, shared by the modules behind
    L{gateway.spool.disk.SpoolDisk}: the layout, the file operations (``ops``, replaceable at
    any time: tests swap in a full disk), this process's ``tag`` on its temp files in tmp/ (so
    recovery removes only files no live writer of this process owns), one batching directory
    fsync per hot directory, and the clock that stamps records and reasons.
    """

    def __init__(self, root: str, ops: FileOps, tag: str, clock: Callable[[], float]) -> None:
        self.layout = SpoolLayout(os.path.abspath(root))
        self.ops = ops
        self.tag = tag
        self.now = clock
        # The syncers keep the ops they were made with (a cached directory descriptor each).
        self.queue_sync = DirectorySyncer(ops, self.layout.queue)
        self.incoming_sync = DirectorySyncer(ops, self.layout.incoming)
        self.failed_sync = DirectorySyncer(ops, self.layout.failed)
        self.held_sync = DirectorySyncer(ops, self.layout.held)
        self._counter = itertools.count()

    def tmp_path(self, queue_id: str, suffix: str) -> str:
        """This process's temp file for ``queue_id`` in tmp/."""
        return os.path.join(self.layout.tmp, f"{self.tag}.{queue_id}{suffix}")

    def unique_tmp_path(self, queue_id: str, suffix: str) -> str:
        """A temp file in tmp/ no other call of this process uses (records, reasons)."""
        return self.tmp_path(queue_id, f".{next(self._counter)}{suffix}")

    def write_temp_file(self, queue_id: str, suffix: str, data: bytes, durable: bool,
                        mtime: Optional[float] = None) -> str:
        """
        Write ``data`` into a new temp file for ``queue_id`` in tmp/ (``suffix`` says what it
        is) and return its path for the caller to rename into place.  ``mtime`` sets its
        modification time (a record's schedule hint); ``durable`` fsyncs it.  On failure
        nothing is left behind and the OSError propagates.
        """
        ops = self.ops
        tmp = self.unique_tmp_path(queue_id, suffix)
        fd = None
        try:
            fd = ops.open_new(tmp)
            ops.write(fd, data)
            if mtime is not None:
                ops.set_mtime(fd, mtime)
            if durable:
                ops.sync_file(fd)
            ops.close(fd)
            fd = None
        except OSError:
            if fd is not None:
                quietly(ops.close, fd)
            quietly(ops.unlink, tmp)
            raise
        return tmp

    def write_temp_reason(self, queue_id: str, text: str, durable: bool) -> str:
        """
        Write ``text``, the admin's account of why ``queue_id`` left the queue, into a new temp
        file in tmp/ (see L{write_temp_file}).  ``durable`` fsyncs it: failed/'s reason is part
        of the "failed" protocol (see L{gateway.spool}), while quarantine/'s is a courtesy that
        must never keep an entry queued (quarantine/ is not fsynced either).
        """
        return self.write_temp_file(queue_id, REASON, text.encode("utf-8", "replace"), durable)

    def syncer(self, where: str) -> DirectorySyncer:
        """The directory fsync of a commit destination: "queue", "held" or "incoming"."""
        return {"queue": self.queue_sync, "held": self.held_sync, "incoming": self.incoming_sync}[where]

    def close(self) -> None:
        """Close the syncers' cached directory descriptors (reopened on the next sync)."""
        for syncer in (self.queue_sync, self.incoming_sync, self.failed_sync, self.held_sync):
            syncer.close()

    def ensure_directories(self) -> None:
        """Create the layout (0700) if missing.  Existing directories keep their modes."""
        try:
            os.makedirs(self.layout.root, mode=DIR_MODE, exist_ok=True)
            for d in self.layout.directories():
                os.makedirs(d, mode=DIR_MODE, exist_ok=True)
        except OSError as e:
            raise spool_error(e, f"create the spool directories under {self.layout.root}") from None


class SpoolLock:
    """
    The spool lock: an ``flock`` on <spool>/lock, held by the running daemon (and briefly by
    the queue command for offline changes), with the holder's pid written into the file.  One
    owner at a time is what lets the daemon's runner assume nobody else moves its entries.
    """

    def __init__(self, layout: SpoolLayout) -> None:
        self.path = layout.lock
        self._root = layout.root
        self._fd: Optional[int] = None

    def acquire(self, wait: float) -> None:
        """
        Take the lock; L{SpoolBusy} if another process keeps it for more than ``wait`` seconds.
        Not thread-safe by itself: the caller serialises (recovery and the first intake may
        both lock).
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise spool_error(e, f"open {self.path}") from None
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
                pid = self.read_pid(fd)
                os.close(fd)
                if busy:
                    raise SpoolBusy(
                        f"spool {self._root} is in use by another graphsmtp process"
                        + (f" (pid {pid})" if pid else ""), pid,
                    ) from None
                raise spool_error(e, f"lock {self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def share(self, fd: int) -> None:
        """
        An intake worker process (L{gateway.workers}): hold the lock through ``fd``, the main
        process's own lock descriptor inherited at spawn.  flock() belongs to the open file
        description, so the worker holds the very lock the main took — no second daemon or
        offline queue command can start while any process of this gateway lives — and intake
        never tries (and fails) to take it exclusively for itself.
        """
        if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
            raise SpoolError(f"descriptor {fd} is not the lock of spool {self._root}")
        self._fd = fd

    @property
    def descriptor(self) -> Optional[int]:
        """The descriptor through which this process holds the lock (None: not held)."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> Optional[int]:
        """The pid of the process holding the lock (-1 if unknown), or None when nobody does."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return self.read_pid(fd) or -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def read_pid(fd: int) -> Optional[int]:
        try:
            return int(os.pread(fd, 32, 0).strip() or 0) or None
        except (OSError, ValueError):
            return None


__all__ = ["SpoolLayout", "SpoolFiles", "SpoolLock", "SpoolBusy", "MSG", "ENV", "REASON"]
