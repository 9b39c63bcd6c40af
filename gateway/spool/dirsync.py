"""
Group commit for directory fsyncs.

Every accepted message needs "fsync the queue directory after the rename" before the 250.  A
directory fsync makes *all* renames done before it durable, so when ten SMTP sessions commit at
once, one fsync can cover all ten.  Callers (spool threads) call L{DirectorySyncer.sync} right
after their rename; if an fsync that started *after* their rename is already running they wait
for it, otherwise they start one that covers everybody who arrived so far.  The caller's rename
is always made durable by an fsync that began after it — never assumed from one that began
before — so batching does not weaken the guarantee.
"""

from __future__ import annotations

import os
import threading

from gateway.spool.fileops import FileOps


class DirectorySyncer:
    """Thread-safe, batching ``fsync(directory)``.  Blocking: call from a spool thread."""

    def __init__(self, ops: FileOps, path: str) -> None:
        self.path = path
        self._ops = ops
        self._cond = threading.Condition()
        self._requested = 0
        self._completed = 0
        self._running = False
        self._fd: int | None = None
        self.fsyncs = 0

    def sync(self) -> None:
        """Return once a directory fsync that started after this call has succeeded."""
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while True:
                if self._completed >= ticket:
                    return
                if not self._running:
                    self._running = True
                    covers = self._requested
                    break
                self._cond.wait()
        succeeded = False
        try:
            # Only the thread running the fsync touches _fd (others wait on the condition).
            if self._fd is None:
                self._fd = self._ops.open_dir(self.path)
            self._ops.sync_dir(self.path, self._fd)
            succeeded = True
        finally:
            with self._cond:
                self._running = False
                if succeeded:
                    self.fsyncs += 1
                    self._completed = max(self._completed, covers)
                # On failure the waiters wake up, find themselves not covered and one of them
                # tries again; this caller gets the exception.
                self._cond.notify_all()

    def close(self) -> None:
        """Close the cached directory descriptor (it is reopened on the next sync)."""
        with self._cond:
            if self._fd is not None and not self._running:
                os.close(self._fd)
                self._fd = None


__all__ = ["DirectorySyncer"]
