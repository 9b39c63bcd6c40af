"""
Test doubles for code that runs on the spool (public: SMTP-layer and plugin tests use them).
The thread doubles live in L{gateway.testing.threads} and are re-exported here.

- L{make_test_spool}: a real L{DirectorySpool} whose thread jobs run inline
  (L{gateway.testing.threads}), so trial tests drive it with a clock and no real threads.
- L{RecordingFileOps}: real file operations that also record their order (durability tests).
- L{FullDiskFileOps}: writes fail with ENOSPC (or any errno) after a byte budget.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Optional

from gateway.spool.fileops import FileOps
from gateway.testing.threads import ImmediateReactor, ManualThreadPool, SynchronousThreadPool


def _sync_everything(fd: int) -> int:
    """``syncfs``'s stand-in: flushes more than the one filesystem, and never fails."""
    os.sync()
    return 0


class RecordingFileOps(FileOps):
    """
    Real operations, recorded as ``(operation, path)`` in ``events`` in the order they happen
    (descriptor operations are recorded with the path the descriptor was opened for).
    """

    def __init__(self, whole_filesystem: Optional[bool] = None) -> None:
        """
        ``whole_filesystem``: True stands in for ``syncfs`` (with ``os.sync``), so a test sees
        the order the spool keeps where the kernel has it; False flushes file by file (as
        ``[spool] flush = "fdatasync"``); None: whatever this kernel offers.
        """
        if whole_filesystem:
            self._syncfs = _sync_everything
        elif whole_filesystem is not None:
            self.flush_per_file()
        self.events: list[tuple[str, str]] = []
        #: One list of paths per data flush (L{FileOps.sync_files}): group commit shares them.
        self.flushes: list[list[str]] = []
        self._paths: dict[int, str] = {}
        self._grouped = False

    def open_new(self, path: str) -> int:
        fd = super().open_new(path)
        self._paths[fd] = path
        self.events.append(("open", path))
        return fd

    def write(self, fd: int, data: bytes) -> None:
        super().write(fd, data)
        self.events.append(("write", self._paths.get(fd, "?")))

    def sync_file(self, fd: int) -> None:
        super().sync_file(fd)
        if not self._grouped:
            self.flushes.append([self._paths.get(fd, "?")])
            self.events.append(("fsync", self._paths.get(fd, "?")))

    def sync_files(self, fds) -> bool:
        """Recorded as one flush, and as one ``fsync`` event per file it made durable (a
        flush of the whole filesystem also as one ``syncfs`` event after them)."""
        self._grouped = True
        try:
            whole = super().sync_files(fds)
        finally:
            self._grouped = False
        self.flushes.append([self._paths.get(fd, "?") for fd in fds])
        self.events.extend(("fsync", self._paths.get(fd, "?")) for fd in fds)
        if whole:
            self.events.append(("syncfs", ""))
        return whole

    def close(self, fd: int) -> None:
        super().close(fd)
        self.events.append(("close", self._paths.pop(fd, "?")))

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        self.events.append(("rename", dst))

    def unlink(self, path: str) -> None:
        super().unlink(path)
        self.events.append(("unlink", path))

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        super().pwrite(fd, data, offset)
        self.events.append(("pwrite", self._paths.get(fd, "?")))

    def sync_filesystem(self, fd: int) -> None:
        """Stands in with ``os.sync`` when constructed with ``whole_filesystem=True``."""
        if self._syncfs is _sync_everything:
            _sync_everything(fd)
        else:
            super().sync_filesystem(fd)
        self.events.append(("syncfs", ""))

    def sync_dir(self, path: str, fd: Optional[int] = None) -> None:
        super().sync_dir(path, fd)
        self.events.append(("fsync-dir", path))


class FullDiskFileOps(FileOps):
    """Writes succeed until ``budget`` bytes were written, then fail with ``error`` (ENOSPC)."""

    def __init__(self, budget: int = 0, error: int = errno.ENOSPC) -> None:
        self.budget = budget
        self.error = error

    def _spend(self, n: int) -> None:
        if n > self.budget:
            raise OSError(self.error, os.strerror(self.error))
        self.budget -= n

    def write(self, fd: int, data: bytes) -> None:
        self._spend(len(data))
        super().write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self._spend(len(data))
        super().pwrite(fd, data, offset)


class FailingFileOps(FileOps):
    """Raises ``OSError(error)`` from the named operation (e.g. "sync_dir", "rename")."""

    def __init__(self, operation: str, error: int = errno.EIO, after: int = 0) -> None:
        self.operation = operation
        self.error = error
        self.after = after

    def __getattribute__(self, name: str) -> Any:
        if name == object.__getattribute__(self, "operation"):
            real = object.__getattribute__(self, name)

            def failing(*args: Any, **kwargs: Any) -> Any:
                if self.after > 0:
                    self.after -= 1
                    return real(*args, **kwargs)
                raise OSError(self.error, os.strerror(self.error))
            return failing
        return object.__getattribute__(self, name)


def make_test_spool(directory: str, clock: Optional[ImmediateReactor] = None, **kwargs: Any):
    """A real L{DirectorySpool} on ``directory`` whose jobs run inline on ``clock``."""
    from gateway.spool.store import DirectorySpool

    clock = clock if clock is not None else ImmediateReactor()
    return DirectorySpool(directory, SynchronousThreadPool(), clock, **kwargs)


__all__ = [
    "ImmediateReactor", "SynchronousThreadPool", "ManualThreadPool", "RecordingFileOps",
    "FullDiskFileOps", "FailingFileOps", "make_test_spool",
]
