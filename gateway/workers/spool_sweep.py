"""
Blocking clean-up after an intake worker ended (run in a thread by the supervisor).

A worker writes its temporary files as ``tmp/<tag>.*`` with a tag the supervisor chose, so the
files a dead worker leaves behind are known exactly and removed at once instead of lying there
until the next start-up's recovery.  A message whose record was renamed into queue/ just before
the worker died may never have been announced to the main process: every queue id minted since
the worker started that it did not announce is listed for announcing (announcing an entry the
runner already knows only reschedules it at its recorded time).
"""

from __future__ import annotations

import os
from typing import Collection, Optional

import attrs

from gateway.spool.fileops import FileOps
from gateway.spool.inflight import INFLIGHT, settle
from gateway.spool.journal import JOURNAL
from gateway.spool.queueid import QUEUE_ID_LENGTH, is_queue_id

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_CHARS = 11


def minted_at(queue_id: str) -> float:
    """The POSIX time a queue id was minted (L{gateway.spool.queueid}: 11 base-32 time digits)."""
    micros = 0
    for char in queue_id[:_TIME_CHARS]:
        micros = micros * 32 + _ALPHABET.index(char)
    return micros / 1_000_000


def unannounced_since(queue_dir: str, since: float, announced: Collection[str]) -> list[str]:
    """Queue ids with a record in ``queue_dir``, minted at ``since`` or later, not in ``announced``."""
    found = []
    with os.scandir(queue_dir) as entries:
        for entry in entries:
            queue_id, _, suffix = entry.name.partition(".")
            if suffix != "env" or len(queue_id) != QUEUE_ID_LENGTH or not is_queue_id(queue_id):
                continue
            if queue_id not in announced and minted_at(queue_id) >= since:
                found.append(queue_id)
    return sorted(found)


@attrs.frozen
class TempCleanup:
    """What L{remove_temp_files} did: files removed, and markers kept because no flush worked."""

    removed: int
    kept_markers: tuple[str, ...] = ()


def remove_temp_files(tmp_dir: str, tag: str, watch: Optional[int] = None) -> TempCleanup:
    """
    Remove ``tmp_dir/<tag>.*`` (a dead worker's unfinished messages).  The marker of a batch it
    died in the window of (L{gateway.spool.inflight}) goes last, after a flush of the filesystem
    has put that batch on disk whole; if the flush fails it stays, and the next start-up checks
    the batch.  So does its commit process's intake journal (L{gateway.spool.journal}), flushed
    through ``watch``, a descriptor opened before the worker started (without one it stays for
    start-up): a write the kernel failed since then is reported to it, not to a new one.
    """
    prefix = tag + "."
    removed = 0
    markers: list[str] = []
    journals: list[str] = []
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix):
                continue
            if entry.name.endswith(INFLIGHT):
                markers.append(entry.path)
                continue
            if entry.name.endswith(JOURNAL):
                journals.append(entry.path)
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    # Without a descriptor from before the worker started, its journal waits for start-up.
    settled, kept = (markers + journals, []) if watch is not None else (markers, journals)
    if settled and not settle(FileOps(), tmp_dir, settled, watch):
        kept += settled
        settled = []
    return TempCleanup(removed + len(settled), tuple(os.path.basename(path) for path in kept))


__all__ = ["minted_at", "unannounced_since", "remove_temp_files", "TempCleanup"]
