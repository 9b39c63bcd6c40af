"""
Writing small private files (users file, encrypted credentials, keys) so that a crash leaves
either the old or the new file, never a torn one, and no other user can ever read them.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional


def fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private_file(path: str, data: bytes, owner: Optional[tuple[int, int]] = None) -> None:
    """
    Atomically replace ``path`` with ``data``: a 0600 temporary file in the same directory,
    fsynced, renamed over ``path``, directory fsynced.  ``owner`` (uid, gid) is applied when
    running as root, so a file edited by root stays readable by the service user.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


__all__ = ["fsync_directory", "replace_private_file"]
