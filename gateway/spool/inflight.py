"""
Commits in flight: the marker a batch leaves in tmp/ while its entries are already in queue/
or held/ but not yet flushed, and what start-up recovery does with the entries such a batch
left behind.

Why there is a window at all: a batch renames its entries into place *before* its one flush
(L{gateway.spool.accept.Acceptor.publish_batch}), so that a lone commit pays one flush instead
of two.  Nothing is acknowledged before that flush returns.  A crash of the process in the
window leaves the entries whole (the kernel still writes the page cache out); a power loss
can leave one whose record or message never reached the disk: a record that does not decode,
or a message shorter than its record says.  Such an entry was never acknowledged, and it must
not be delivered as it is.

The marker is an empty file, ``tmp/<tag>.<first id>.<last id>.inflight``, created before the
renames and removed once the flush returned (or the batch was undone).  Every entry of the
batch has an id between the two.  A filesystem that journals its metadata in order (ext4,
XFS, btrfs) cannot keep a rename and lose the marker created before it, so after a power loss
every entry that may be incomplete is within the range of some marker left in tmp/.  (ext4
without a journal gives no such order: there only the digest check below stands between an
incomplete entry and delivery.)  Recovery checks those entries (record, size, digest) and
quarantines the incomplete ones with a reason that says what happened; after a clean stop
there is no marker and nothing to check.  Apart from its own batch, only L{settle} removes a
marker, after a flush of the whole filesystem that reported no error (``syncfs``; there is no
trustworthy flush without it, and then the marker stays): recovery once its check is done,
the intake supervisor after a worker died in its window.

Only where the kernel has a trustworthy ``syncfs`` and ``[spool] flush`` is "auto" does a
batch rename first: file by file, the flushes cost the same in either order.

Nothing incomplete is sent even without a marker: a record that does not decode is
quarantined when it is loaded, and the deliverer checks the message's digest before sending.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from gateway.spool.fileops import FileOps, quietly
from gateway.spool.layout import ENV, MSG, SpoolFiles, SpoolLayout
from gateway.spool.quarantine import Quarantine, Quarantined
from gateway.spool.queueid import QUEUE_ID_LENGTH, is_queue_id
from gateway.spool.record import RecordError, decode_record, file_digest

INFLIGHT = ".inflight"
INCOMPLETE = ("incomplete after a crash: its commit was cut short before the flush that precedes the "
              "250, so it was never acknowledged (the client was told nothing and sends it again)")


def mark(files: SpoolFiles, queue_ids: list[str]) -> Optional[str]:
    """
    Create the marker of a batch of ``queue_ids``, named after its first and last id (so a
    check covers this batch and nothing minted later); its path, or None if it could not be
    made.
    """
    path = files.tmp_path(min(queue_ids), f".{max(queue_ids)}{INFLIGHT}")
    try:
        files.ops.close(files.ops.open_new(path))
    except OSError:
        quietly(files.ops.unlink, path)
        return None
    return path


def unmark(files: SpoolFiles, path: str) -> None:
    """The batch is flushed, or undone: its entries need no check any more."""
    quietly(files.ops.unlink, path)


def own_markers_within(files: SpoolFiles, queue_ids: set[str]) -> list[str]:
    """This process's markers (by its tag) of batches that begin and end with ids in ``queue_ids``."""
    tmp, prefix = files.layout.tmp, f"{files.tag}."
    paths = [os.path.join(tmp, name) for name in os.listdir(tmp) if name.startswith(prefix) and name.endswith(INFLIGHT)]
    return [path for path in paths
            if any(first in queue_ids and last in queue_ids for first, last in id_ranges([path]))]


def id_ranges(paths: list[str]) -> list[tuple[str, str]]:
    """The first and last queue id of the batch each marker at ``paths`` names (malformed ones skipped)."""
    ranges = []
    for path in paths:
        parts = os.path.basename(path)[: -len(INFLIGHT)].split(".")
        ids = parts[1:3]
        if len(parts) == 3 and all(len(i) == QUEUE_ID_LENGTH and is_queue_id(i) for i in ids):
            ranges.append((ids[0], ids[1]))
    return ranges


def watch_descriptor(tmp_dir: str) -> Optional[int]:
    """
    A descriptor of the spool's filesystem to flush through (L{settle}) after a process that
    is about to start has ended; None if it cannot be opened (that process's journal then
    waits for start-up).
    """
    try:
        return os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def settle(ops: FileOps, tmp_dir: str, paths: list[str], fd: Optional[int] = None) -> bool:
    """
    Flush the spool's filesystem, then remove the markers (or intake journals) at ``paths``:
    whatever their batches left (whole in the page cache, when only their process died) is on
    disk now, and so is what recovery quarantined.  False when the flush failed: they stay, for
    the next start-up to check again.  ``fd``: flush through this descriptor of the filesystem,
    opened before the process whose writes are settled started, so that a write the kernel
    failed since then is reported (to a descriptor opened later it is not).
    """
    try:
        if fd is not None:
            ops.sync_filesystem(fd)
        else:
            own = ops.open_dir(tmp_dir)
            try:
                ops.sync_filesystem(own)
            finally:
                ops.close(own)
    except OSError:
        return False
    for path in paths:
        quietly(ops.unlink, path)
    return True


def quarantine_incomplete(files: SpoolFiles, quarantine: Quarantine,
                          ranges: list[tuple[str, str]]) -> list[Quarantined]:
    """
    Check every entry in queue/ and held/ whose id is within one of ``ranges`` (a batch's
    first and last id) and move the incomplete ones (see the module docstring) into
    quarantine/, with a reason.  Blocking: start-up recovery.
    """
    moved = []
    for directory in (files.layout.queue, files.layout.held):
        with os.scandir(directory) as it:
            ids = [e.name[: -len(ENV)] for e in it if e.name.endswith(ENV)]
        for queue_id in sorted(ids):
            if not any(first <= queue_id <= last for first, last in ranges) or not is_queue_id(queue_id):
                continue
            if not entry_complete(files, directory, queue_id):
                quarantine.set_aside(directory, queue_id, INCOMPLETE)
                moved.append(Quarantined(queue_id, INCOMPLETE))
    return moved


def entry_complete(files: SpoolFiles, directory: str, queue_id: str) -> bool:
    """The record decodes, and the message has the size and digest it records."""
    message = SpoolLayout.path(directory, queue_id, MSG)
    try:
        entry = decode_record(files.ops.read_file(SpoolLayout.path(directory, queue_id, ENV)), message, queue_id)
        if os.stat(message).st_size != entry.size:
            return False
        algorithm = (entry.message_digest or "").partition(":")[0]
        if algorithm in hashlib.algorithms_guaranteed:
            return file_digest(message, algorithm) == entry.message_digest
    except RecordError:
        return False
    except OSError:
        return True  # gone (a lone record, a move cut short) or unreadable: the queue's own rules see to it
    return True


__all__ = ["INFLIGHT", "INCOMPLETE", "mark", "unmark", "id_ranges", "settle", "quarantine_incomplete", "entry_complete",
           "watch_descriptor"]
