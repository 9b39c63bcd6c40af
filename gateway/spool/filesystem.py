"""
The one filesystem the spool is known to be slow on, named at start-up.

On ext4 without a journal, the kernel avoids reusing an inode freed less than a minute ago
(six while its inode table block is dirty) when the block group has another free one: creating
a file looks up the inode table block of each free inode it meets and steps over the recently
freed ones (``recently_deleted()`` in ``fs/ext4/ialloc.c``, checked only when the filesystem
has no journal loaded).  The spool creates two files per accepted message and deletes two
per delivered one, so on such a disk every new message costs more the busier the gateway was
in the last minutes — on the development VM 350–600 µs of kernel CPU per file, against a few
microseconds on a journaled filesystem.  Nothing in the gateway can change that; an operator
can, by moving the spool (docs/deployment.md, "The spool's filesystem").

Linux's sysfs says whether a mounted ext4 has a journal: ``/sys/fs/ext4/<device>/journal_task``
is ``<none>`` without one.  Any other answer, or none (another filesystem, another OS, an older
kernel), means nothing is said.  Blocking (reads sysfs): call it where the spool's recovery runs.
"""

from __future__ import annotations

import os
from typing import Optional

JOURNAL_LESS_EXT4 = (
    "on ext4 without a journal: each new spool file costs more the more files were deleted in "
    "the last minutes (see docs/deployment.md, \"The spool's filesystem\"); a journaled "
    "filesystem avoids it"
)


def slow_creation_warning(path: str, sysfs: str = "/sys") -> Optional[str]:
    """L{JOURNAL_LESS_EXT4} when ``path`` is on an ext4 filesystem without a journal, else None."""
    try:
        device = os.stat(path).st_dev
        block = os.path.realpath(os.path.join(sysfs, "dev", "block", f"{os.major(device)}:{os.minor(device)}"))
        with open(os.path.join(sysfs, "fs", "ext4", os.path.basename(block), "journal_task"), encoding="ascii") as f:
            journal = f.read().strip()
    except (OSError, ValueError):
        return None
    return JOURNAL_LESS_EXT4 if journal == "<none>" else None


__all__ = ["slow_creation_warning", "JOURNAL_LESS_EXT4"]
