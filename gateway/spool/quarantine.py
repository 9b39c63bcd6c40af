"""
Quarantine: what cannot be an entry, or must not be delivered any more, is moved into
quarantine/ for an admin to look at — never deleted, never left where the runner would trip
over it again.  Why each move is ordered the way it is: see the L{gateway.spool} package
docstring.  Blocking: spool threads, or the queue command.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import attrs

from gateway.spool.entry import SpoolEntry
from gateway.spool.fileops import quietly, spool_error
from gateway.spool.layout import ENV, MSG, REASON, SpoolFiles, SpoolLayout


@attrs.frozen
class Quarantined:
    """One thing moved to quarantine/, reported so the reactor thread can log it."""

    name: str
    reason: str


def one_line(text: str) -> str:
    """``text`` with every run of white space (line breaks included) as one space."""
    return " ".join(text.split())


def utc_timestamp(when: float) -> str:
    """``when`` (seconds since the epoch) as the UTC time stamp reason files and notes carry."""
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(when))


class Quarantine:
    """Moves files and entries into quarantine/ (names made unique with ``.1``, ``.2``…)."""

    def __init__(self, files: SpoolFiles) -> None:
        self._files = files

    def move_file(self, path: str, name: Optional[str] = None) -> str:
        """Rename ``path`` into quarantine/ (as ``name``, default its own); returns where it went."""
        quarantine = self._files.layout.quarantine
        base = name or os.path.basename(path)
        target = os.path.join(quarantine, base)
        n = 0
        while os.path.exists(target):
            n += 1
            target = os.path.join(quarantine, f"{base}.{n}")
        self._files.ops.rename(path, target)
        return target

    def move_entry_files(self, directory: str, queue_id: str) -> None:
        """Best effort: whatever of ``queue_id``'s message and record is in ``directory``."""
        # Message first: a record left behind alone would be quarantined again at recovery,
        # a message left alone would be deleted as never acknowledged.
        for suffix in (MSG, ENV):
            path = SpoolLayout.path(directory, queue_id, suffix)
            if os.path.exists(path):
                quietly(self.move_file, path)

    def set_aside(self, directory: str, queue_id: str, reason: str) -> None:
        """L{move_entry_files}, with ``<id>.reason`` beside them for the admin (best effort)."""
        self.move_entry_files(directory, queue_id)
        self._write_reason(queue_id, self._reason_text(queue_id, reason))

    def take_out_of_queue(self, entry: SpoolEntry, reason: str) -> str:
        """
        Take a queued entry out of the queue for good, keeping it for an admin: the message,
        then the record, into quarantine/, with ``<id>.reason`` beside them.  Returns the
        quarantine directory.  Raises L{SpoolError} if nothing could be moved (it stays queued).
        """
        files, qid = self._files, entry.queue_id
        queue = files.layout.queue
        text = self._reason_text(qid, reason) + f"digest at intake: {entry.message_digest}\n"
        try:
            self.move_file(SpoolLayout.path(queue, qid, MSG))
        except FileNotFoundError:
            pass  # already gone: the record alone must still leave the queue
        except OSError as e:
            raise spool_error(e, f"quarantine {qid}") from None
        try:
            self.move_file(SpoolLayout.path(queue, qid, ENV))
        except FileNotFoundError:
            pass
        except OSError as e:
            # A record without its message is quarantined by recovery anyway.
            raise spool_error(e, f"quarantine the record of {qid}") from None
        self._write_reason(qid, text)
        quietly(files.queue_sync.sync)
        return files.layout.quarantine

    def _reason_text(self, queue_id: str, reason: str) -> str:
        return f"queue id: {queue_id}\nquarantined at: {utc_timestamp(self._files.now())}\nreason: {one_line(reason)}\n"

    def _write_reason(self, queue_id: str, text: str) -> None:
        # The reason is a courtesy for the admin: failing to write it must not keep the entry queued.
        try:
            tmp = self._files.write_temp_reason(queue_id, text, durable=False)
        except OSError:
            return
        try:
            self.move_file(tmp, queue_id + REASON)
        except OSError:
            quietly(self._files.ops.unlink, tmp)


__all__ = ["Quarantine", "Quarantined", "one_line", "utc_timestamp"]
