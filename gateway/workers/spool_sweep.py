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
import time
from typing import Collection

import attrs

from gateway.spool.fileops import FileOps
from gateway.spool.inflight import INFLIGHT, settle
from gateway.spool.journal import JOURNAL, settle_journal
from gateway.spool.layout import SpoolFiles
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


def remove_temp_files(tmp_dir: str, tag: str) -> TempCleanup:
    """
    Remove ``tmp_dir/<tag>.*`` (a dead worker's unfinished messages).  The marker of a batch it
    died in the window of (L{gateway.spool.inflight}) goes last, after a flush of the filesystem
    has put that batch on disk whole; if the flush fails it stays, and the next start-up checks
    the batch.  Its commit process's intake journal is settled
    (L{gateway.spool.journal.settle_journal}: the entries it answered for are durable in place
    only once written again and flushed); if that fails it stays for start-up too.
    """
    prefix = tag + "."
    removed = 0
    markers: list[str] = []
    journals: list[str] = []
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix):
                continue
            if entry.name.endswith(INFLIGHT) or entry.name.endswith(JOURNAL):
                (journals if entry.name.endswith(JOURNAL) else markers).append(entry.path)
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    kept = [path for path in journals if not _settle_journal(tmp_dir, tag, path)]
    if markers and not settle(FileOps(), tmp_dir, markers):
        kept += markers
    return TempCleanup(removed + len(markers) + len(journals) - len(kept), tuple(os.path.basename(p) for p in kept))


def _settle_journal(tmp_dir: str, tag: str, path: str) -> bool:
    files = SpoolFiles(os.path.dirname(tmp_dir), FileOps(), tag, time.time)
    try:
        return settle_journal(files, path)
    finally:
        files.close()


__all__ = ["minted_at", "unannounced_since", "remove_temp_files", "TempCleanup"]
