"""
The handful of operating-system calls the spool makes, behind one object.

Why an object: durability is a property of the *order* of these calls (data fsynced before
the rename, the directory fsynced after it, before anyone is told "accepted").  Tests replace
this object with a recording or failing one to check that order, and to simulate a full disk,
without touching the real disk's free space.  Everything here is blocking and runs in a
spool thread (or in the sendmail command), never on the reactor thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from typing import Optional, Sequence

from gateway.spool.interfaces import SpoolError

FILE_MODE = 0o600
DIR_MODE = 0o700
_OPEN_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_OPEN_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_sync_data = getattr(os, "fdatasync", os.fsync)
_OUT_OF_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
    except (IndexError, ValueError):
        return False


def _load_syncfs():
    """
    libc's ``syncfs(2)``, or None.  Only on Linux 5.8 and later: before that, syncfs returned 0
    even when writing back the data failed, and a flush that can hide an I/O error must not
    stand between a message and its 250.
    """
    if not platform.system() == "Linux" or not _kernel_at_least(5, 8):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


#: Loaded once; a constant, never changed (an instance that finds it refused stops using it).
_SYNCFS = _load_syncfs()


class FileOps:
    """The real calls.  Subclass and override to record or to inject failures."""

    def open_new(self, path: str) -> int:
        """Create ``path`` for writing; fails if it exists (ids never clobber each other)."""
        return os.open(path, _OPEN_NEW, FILE_MODE)

    def open_read(self, path: str) -> int:
        return os.open(path, _OPEN_READ)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def copy_range(self, src_fd: int, dst_fd: int, offset: int, count: int) -> None:
        """Copy ``count`` bytes from ``src_fd`` at ``offset`` to the end of ``dst_fd``, in the
        kernel where possible so a 20 MB body never passes through Python memory whole."""
        copy = getattr(os, "copy_file_range", None)
        while count > 0:
            done = 0
            if copy is not None:
                try:
                    done = copy(src_fd, dst_fd, min(count, 1 << 30), offset)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    copy = None
            if copy is None:
                chunk = os.pread(src_fd, min(count, 1 << 20), offset)
                if chunk:
                    self.write(dst_fd, chunk)
                done = len(chunk)
            if done == 0:
                raise OSError(errno.EIO, "source file shorter than expected")
            offset += done
            count -= done

    def sync_file(self, fd: int) -> None:
        """Make the file's data (and the size needed to read it back) durable."""
        _sync_data(fd)

    def sync_files(self, fds: Sequence[int]) -> bool:
        """
        Make the data of all ``fds`` durable, with one flush of their filesystem where the
        kernel offers a trustworthy ``syncfs`` (see L{_load_syncfs}), else one ``fdatasync``
        each.  This is what group commit stands on: ten messages accepted at once cost one
        device flush, not twenty.  All ``fds`` must be on one filesystem (the spool's).
        True when the whole filesystem was flushed: then every rename made in it before the
        call is durable too, and no directory fsync is needed for them.
        """
        if not fds:
            return False
        if self._syncfs is not None and len(fds) > 1:
            if self._syncfs(fds[0]) == 0:
                return True
            err = ctypes.get_errno()
            if err not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter said no
                raise OSError(err, os.strerror(err))
            self._syncfs = None
        for fd in fds:
            self.sync_file(fd)
        return False

    def sync_filesystem(self, fd: int) -> None:
        """
        Flush the whole filesystem ``fd`` is on, for rare moments (after a process died in a
        commit's window), so whatever ``[spool] flush`` says.  Only with a trustworthy
        ``syncfs``: ``sync`` reports no error, so without one this raises ENOSYS and the caller
        keeps what the flush would have let it remove.
        """
        if _SYNCFS is None:
            raise OSError(errno.ENOSYS, "no trustworthy syncfs on this kernel")
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    @property
    def flushes_whole_filesystem(self) -> bool:
        """Whether L{sync_files} flushes with ``syncfs`` (so renames made before it are covered)."""
        return self._syncfs is not None

    # A ctypes function is no descriptor: read through the instance it is not bound to it.
    _syncfs = _SYNCFS

    def flush_per_file(self) -> "FileOps":
        """Never use ``syncfs`` (``[spool] flush = "fdatasync"``): for a spool on a filesystem
        shared with heavy writers, whose dirty data a syncfs would have to write out too."""
        self._syncfs = None
        return self

    def set_mtime(self, fd: int, when: float) -> None:
        os.utime(fd, (when, when))

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def open_dir(self, path: str) -> int:
        return os.open(path, _OPEN_DIR)

    def sync_dir(self, path: str, fd: Optional[int] = None) -> None:
        """fsync a directory so the renames/creations in it survive a crash.  ``fd`` is an
        already open descriptor of ``path`` (the spool keeps one per hot directory, saving an
        open and a close per accepted message)."""
        if fd is not None:
            os.fsync(fd)
            return
        fd = os.open(path, _OPEN_DIR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


def spool_error(error: OSError, doing: str) -> SpoolError:
    """Map an OSError to the L{SpoolError} intake understands (disk full gets its own flag)."""
    out_of_space = error.errno in _OUT_OF_SPACE
    reason = error.strerror or str(error)
    return SpoolError(f"spool could not {doing}: {reason}", out_of_space=out_of_space, errno=error.errno)


def quietly(call, *args) -> Optional[OSError]:
    """Run a best-effort cleanup call; returns the error instead of raising."""
    try:
        call(*args)
    except OSError as e:
        return e
    return None


__all__ = ["FileOps", "FILE_MODE", "DIR_MODE", "spool_error", "quietly"]
