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

The marker is an empty file, ``tmp/<tag>.<earliest id>.inflight``, created before the renames
and removed after the flush.  Queue ids sort by the time they were minted, so every entry of
the batch has an id at least the marker's.  A filesystem that journals its metadata in order
(ext4, XFS, btrfs) cannot keep a rename and lose the marker created before it, so after a
power loss every entry that may be incomplete is at or after some marker left in tmp/.
Recovery checks those entries (record, size, digest) and quarantines the incomplete ones with
a reason that says what happened; after a clean stop there is no marker and nothing to check.
A marker is only ever removed by its own batch, after the flush, or after a flush of the whole
filesystem (L{settle}: recovery once its check is done, the intake supervisor after a worker
died in its window), so a power loss at any moment finds every possibly incomplete entry at or
after a marker.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from gateway.spool.fileops import FileOps, quietly
from gateway.spool.layout import ENV, MSG, SpoolFiles, SpoolLayout
from gateway.spool.quarantine import Quarantine, Quarantined
from gateway.spool.queueid import QUEUE_ID_LENGTH, is_queue_id
from gateway.spool.record import RecordError, decode_record

INFLIGHT = ".inflight"
_TIME_PREFIX = 11  # the minted time's characters at the start of a queue id (gateway.spool.queueid)
INCOMPLETE = ("incomplete after a crash: its commit was cut short before the flush that precedes the "
              "250, so it was never acknowledged (the client was told nothing and sends it again)")


def mark(files: SpoolFiles, queue_ids: list[str]) -> Optional[str]:
    """Create the marker of a batch of ``queue_ids``; its path, or None if it could not be made."""
    path = files.tmp_path(min(queue_ids), INFLIGHT)
    try:
        files.ops.close(files.ops.open_new(path))
    except OSError:
        quietly(files.ops.unlink, path)
        return None
    return path


def unmark(files: SpoolFiles, path: str) -> None:
    """The batch is flushed (or undone): its entries need no check any more."""
    quietly(files.ops.unlink, path)


def markers(tmp_dir: str, own_tag: str) -> list[str]:
    """
    The paths of the markers in ``tmp_dir``: any process's but this one's (whose batches in
    flight are whole in memory, and finish by themselves).
    """
    own = own_tag + "."
    with os.scandir(tmp_dir) as it:
        return sorted(e.path for e in it if e.name.endswith(INFLIGHT) and not e.name.startswith(own))


def earliest(paths: list[str]) -> Optional[str]:
    """The earliest queue id the markers at ``paths`` name, or None."""
    ids = [os.path.basename(path)[: -len(INFLIGHT)].rpartition(".")[2] for path in paths]
    ids = [queue_id for queue_id in ids if len(queue_id) == QUEUE_ID_LENGTH and is_queue_id(queue_id)]
    return min(ids) if ids else None


def settle(ops: FileOps, tmp_dir: str, paths: list[str]) -> bool:
    """
    Flush the spool's filesystem, then remove the markers at ``paths``: whatever their
    batches left (whole in the page cache, when only their process died) is on disk now, and so
    is what recovery quarantined.  False when the flush failed: the markers stay, for the next
    start-up to check again.
    """
    try:
        fd = ops.open_dir(tmp_dir)
        try:
            ops.sync_filesystem(fd)
        finally:
            ops.close(fd)
    except OSError:
        return False
    for path in paths:
        quietly(ops.unlink, path)
    return True


def quarantine_incomplete(files: SpoolFiles, quarantine: Quarantine, since: str) -> list[Quarantined]:
    """
    Check every entry in queue/ and held/ minted no earlier than ``since`` and move the
    incomplete ones (see the module docstring) into quarantine/.  Blocking: start-up recovery.
    """
    moved = []
    for directory in (files.layout.queue, files.layout.held):
        with os.scandir(directory) as it:
            ids = [e.name[: -len(ENV)] for e in it
                   if e.name.endswith(ENV) and e.name[:_TIME_PREFIX] >= since[:_TIME_PREFIX]]
        for queue_id in sorted(ids):
            if is_queue_id(queue_id) and not _complete(directory, queue_id):
                quarantine.set_aside(directory, queue_id, INCOMPLETE)
                moved.append(Quarantined(queue_id, INCOMPLETE))
    return moved


def _complete(directory: str, queue_id: str) -> bool:
    """The record decodes, and the message has the size and digest it records."""
    message = SpoolLayout.path(directory, queue_id, MSG)
    try:
        with open(SpoolLayout.path(directory, queue_id, ENV), "rb") as f:
            entry = decode_record(f.read(), message, queue_id)
        if os.stat(message).st_size != entry.size:
            return False
        if entry.message_digest:
            algorithm, _, expected = entry.message_digest.partition(":")
            if algorithm in hashlib.algorithms_guaranteed:
                with open(message, "rb") as f:
                    return hashlib.file_digest(f, algorithm).hexdigest() == expected
    except RecordError:
        return False
    except OSError:
        return True  # gone (a lone record, a move cut short) or unreadable: the queue's own rules see to it
    return True


__all__ = ["INFLIGHT", "INCOMPLETE", "mark", "unmark", "markers", "earliest", "settle", "quarantine_incomplete"]
