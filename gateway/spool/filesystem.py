"""
The filesystems the spool should not be on, named at start-up: the one it is known to be slow
on, and those that lose what it holds although every message in it was acknowledged.

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
kernel), means nothing is said.

The other warning is about where the spool's files live, not how fast.  "250 means on disk" is
only as good as the disk: on tmpfs or ramfs the spool is memory, so every acknowledged message
waiting in it is gone after a restart of the machine; on overlayfs (the writable layer of a
container) it is gone with the container.  ``/proc/self/mountinfo`` names the filesystem type
of the mount the spool is on (L{spool_mount}).  A warning, not a refusal: a test rig or a
throw-away demo may want exactly that, and the operator reads it in the first lines of the log.

A spool under ``/tmp`` or ``/var/tmp`` of a systemd service with ``PrivateTmp=`` (the shipped
unit has it) is lost on any filesystem: systemd bind-mounts a directory of its own,
``…/systemd-private-<id>-<unit>-<random>/tmp``, over them and removes it when the service stops.
The mount table shows that directory as the root of the mount the spool is on, the line with
the mount id the kernel gives for the spool's directory (``/proc/self/fdinfo``).

Blocking (reads sysfs and procfs): call it where the spool's recovery runs.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

JOURNAL_LESS_EXT4 = (
    "on ext4 without a journal: each new spool file costs more the more files were deleted in "
    "the last minutes (see docs/deployment.md, \"The spool's filesystem\"); a journaled "
    "filesystem avoids it"
)


IN_MEMORY = (
    "in memory ({fstype}): every message in it, acknowledged or not, is lost when the machine "
    "restarts; put the spool on a disk (see docs/deployment.md, \"The spool's filesystem\")"
)

PRIVATE_TMP = (
    "in the service's private /tmp (systemd PrivateTmp, as in the shipped unit): every message in "
    "it, acknowledged or not, is lost when the service stops; put the spool outside /tmp and "
    "/var/tmp, e.g. in /var/lib/graphsmtp (see docs/deployment.md, \"The spool's filesystem\")"
)

CONTAINER_LAYER = (
    "on overlayfs, usually a container's writable layer: every message in it, acknowledged or "
    "not, is lost with the container (or with the overlay's upper layer); mount a volume for the "
    "spool (see docs/deployment.md, \"The spool's filesystem\")"
)


def spool_filesystem_warning(path: str, sysfs: str = "/sys", mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """What the daemon says at start-up about the filesystem ``path`` is on, or None."""
    mount = spool_mount(path, mountinfo)
    return _private_tmp(mount) or _volatile(mount) or slow_creation_warning(path, sysfs)


class Mount(NamedTuple):
    """One line of the mount table: what of its filesystem is mounted there, and the filesystem's type."""

    root: bytes
    fstype: str


def spool_mount(path: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[Mount]:
    """
    The mount the directory ``path`` is on: the mount table's line with the kernel's own id for
    it (L{mount_id}), which no stacking, moving or covering of mounts can fool, and which names
    a btrfs subvolume's mount too (its device number is not the table's).  Without one (an older
    kernel), the mounts of its device decide (L{_by_device}).  Paths are compared as bytes: they
    need not be UTF-8.  None when the table cannot be read or names none.
    """
    try:
        with open(mountinfo, "rb") as f:
            table = [line for line in map(_table_line, f) if line is not None]
    except (OSError, ValueError):
        return None
    kernel_id = mount_id(path)
    if kernel_id is not None:
        for fields, mount in table:
            if fields[0] == b"%d" % kernel_id:
                return mount
    try:
        real = os.fsencode(os.path.realpath(path))
        device = os.stat(real).st_dev
    except (OSError, ValueError):
        return None
    return _by_device(real, f"{os.major(device)}:{os.minor(device)}".encode(), table)


def _table_line(line: bytes) -> Optional[tuple[list[bytes], Mount]]:
    """
    "36 35 0:50 /root /mnt rw,relatime shared:1 - overlay overlay rw,...": id, parent, device,
    root, mount point, options and any number of optional fields, then after the lone "-" the type.
    """
    mount, _, rest = line.partition(b" - ")
    fields, after = mount.split(), rest.split()
    if len(fields) < 5 or not after:
        return None
    return fields, Mount(_unescape(fields[3]), after[0].decode("ascii", "replace"))


def _by_device(real: bytes, device: bytes, table: list[tuple[list[bytes], Mount]]) -> Optional[Mount]:
    """Of the mounts of ``device``, the one with the longest mount point above ``real`` (the last of
    equal ones), else the first of them."""
    first: Optional[Mount] = None
    found: Optional[tuple[int, Mount]] = None
    for fields, mount in table:
        if fields[2] != device:
            continue
        first = first or mount
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point if point.endswith(b"/") else point + b"/")
        if inside and (found is None or len(point) >= found[0]):
            found = (len(point), mount)
    return found[1] if found is not None else first


def mount_id(path: str, fdinfo: str = "/proc/self/fdinfo") -> Optional[int]:
    """The kernel's id of the mount the directory ``path`` is on (``mnt_id`` in fdinfo, Linux ≥ 3.15), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        with open(os.path.join(fdinfo, str(fd)), "rb") as f:
            for line in f:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)
    return None


def _unescape(field: bytes) -> bytes:
    """The kernel writes space, tab, newline and backslash in mount table paths as octal escapes."""
    for escaped, char in ((b"\\040", b" "), (b"\\011", b"\t"), (b"\\012", b"\n"), (b"\\134", b"\\")):
        field = field.replace(escaped, char)
    return field


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """The type of the mounted filesystem ``path`` is on (``ext4``, ``tmpfs``, ``overlay``…), or None."""
    mount = spool_mount(path, mountinfo)
    return None if mount is None else mount.fstype


def private_tmp_warning(path: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """L{PRIVATE_TMP} when ``path`` is under a systemd service's private /tmp or /var/tmp, else None."""
    return _private_tmp(spool_mount(path, mountinfo))


def volatile_storage_warning(path: str, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """L{IN_MEMORY} or L{CONTAINER_LAYER} when ``path`` is on such a filesystem, else None."""
    return _volatile(spool_mount(path, mountinfo))


def _private_tmp(mount: Optional[Mount]) -> Optional[str]:
    return PRIVATE_TMP if mount is not None and b"/systemd-private-" in mount.root else None


def _volatile(mount: Optional[Mount]) -> Optional[str]:
    if mount is not None and mount.fstype in ("tmpfs", "ramfs"):
        return IN_MEMORY.format(fstype=mount.fstype)
    if mount is not None and mount.fstype == "overlay":
        return CONTAINER_LAYER
    return None


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


__all__ = [
    "spool_filesystem_warning", "slow_creation_warning", "volatile_storage_warning", "private_tmp_warning",
    "filesystem_type", "mount_id", "spool_mount", "Mount", "JOURNAL_LESS_EXT4", "IN_MEMORY", "CONTAINER_LAYER", "PRIVATE_TMP",
]
