"""
The intake journal: how the commit process makes a batch durable with one flush that changes
no metadata.

Why: a batch made durable by ``syncfs`` makes the filesystem commit its own journal (two new
files and two renames per message), and on the journaled test disk that costs 0.67-0.80 ms for
a lone 10 KB message, where Postfix's one ``fsync`` of one file costs 0.25-0.33 ms.  Blocks
that are already allocated and written change no metadata when they are written again, so an
``fdatasync`` of them writes the blocks and flushes the device: 0.10-0.14 ms
(``bench/commit_costs.py`` measures all three).

So the commit process (L{gateway.spool.commit_process}) keeps a journal,
``tmp/<tag>.<pid>.journal``, allocated and zero-filled when it starts.  A batch is written and
renamed into place as before (L{gateway.spool.accept.Acceptor.publish_batch}); then each
entry's record and message are appended to the journal in one write, and one ``fdatasync`` of
the journal makes the batch durable: the 250s go out after it.  At most L{RETIRE_AFTER}
seconds later (sooner when it is full) the child flushes the filesystem (``syncfs``): the
entries are then durable in place, and the journal starts a new generation.  Frames of older
generations are never read again.

After a crash the journal is read at start-up (L{gateway.spool.recovery}) before anything else:

- **Same boot** (a process died, the kernel did not): the page cache kept every write, so
  every entry is whole wherever it has moved since.  Nothing is replayed.
- **Another boot** (power loss, kernel crash): every entry of the current generation that is
  in none of queue/, held/, failed/ and archive/, or is incomplete where it was committed, is
  written again from the journal.  An entry that moved on (held, failed, archived) moved by a
  protocol with its own flush.

Then the filesystem is flushed and the journal removed.  The one case replay cannot tell from
a lost entry: one delivered (removed) before its frame was retired, followed by a power loss.
It is sent again: a second delivery, never a lost one, and only in the L{RETIRE_AFTER} after
its acceptance.

Format.  Two header slots of 512 bytes at offsets 0 and 512, written alternately (a torn
header write leaves the other): L{_HEADER} (magic, generation, crc32 of the rest) and the boot
id.  The valid slot with the higher generation counts.  Frames from L{DATA_START}: length and
crc32 of the body (L{_FRAME}); the body is L{_BODY} (generation, destination, id length,
record length), the queue id, the record, the message.  Reading stops at the first frame whose
length is zero or too large, whose crc does not match or whose generation is not the header's.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from typing import Callable, Optional

import attrs

from gateway.spool import inflight
from gateway.spool.fileops import FileOps
from gateway.spool.layout import ENV, MSG, SpoolFiles, SpoolLayout

JOURNAL = ".journal"
#: Space allocated per commit process; a batch that does not fit commits without the journal.
JOURNAL_SIZE = 8 * 1024 * 1024
#: How long an entry waits at most, after its 250, for the flush that retires its frame.
RETIRE_AFTER = 0.1
DATA_START = 4096
_SLOT = 512
_MAGIC = b"GSJ1"
_HEADER = struct.Struct("!4sQI")  # magic, generation, crc32(magic + generation + boot id)
_BOOT_ID_LENGTH = 36
_FRAME = struct.Struct("!II")  # body length, crc32(body)
_BODY = struct.Struct("!QBBI")  # generation, destination, id length, record length
_PLACES = ("queue", "held")


class JournalError(Exception):
    """A journal whose header cannot be read."""


def boot_id() -> Optional[str]:
    """This boot's id (Linux): a journal written under another one has outlived its page cache."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            value = f.read().strip().decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    return value if len(value) == _BOOT_ID_LENGTH else None


@attrs.frozen
class JournalEntry:
    """One committed entry as the journal keeps it: enough to write it again."""

    queue_id: str
    where: str  # "queue" or "held"
    record: bytes
    message: bytes


@attrs.frozen
class JournalContents:
    generation: int
    boot: str
    entries: tuple[JournalEntry, ...]


def _header(generation: int, boot: str) -> bytes:
    boot_bytes = boot.encode("ascii")
    crc = zlib.crc32(_MAGIC + generation.to_bytes(8, "big") + boot_bytes)
    return _HEADER.pack(_MAGIC, generation, crc) + boot_bytes


def _read_slot(data: bytes) -> Optional[tuple[int, str]]:
    if len(data) < _HEADER.size + _BOOT_ID_LENGTH:
        return None
    magic, generation, crc = _HEADER.unpack_from(data)
    boot_bytes = data[_HEADER.size:_HEADER.size + _BOOT_ID_LENGTH]
    if magic != _MAGIC or crc != zlib.crc32(_MAGIC + generation.to_bytes(8, "big") + boot_bytes):
        return None
    try:
        return generation, boot_bytes.decode("ascii")
    except UnicodeDecodeError:
        return None


def encode_frames(generation: int, entries: list[JournalEntry]) -> bytes:
    parts = []
    for entry in entries:
        queue_id = entry.queue_id.encode("ascii")
        body = b"".join((_BODY.pack(generation, _PLACES.index(entry.where), len(queue_id), len(entry.record)),
                         queue_id, entry.record, entry.message))
        parts.append(_FRAME.pack(len(body), zlib.crc32(body)))
        parts.append(body)
    return b"".join(parts)


def read_journal(path: str) -> JournalContents:
    """The current generation's entries of the journal at ``path``; L{JournalError} if no header is valid."""
    with open(path, "rb") as f:
        data = f.read()
    slots = [slot for slot in (_read_slot(data[0:_SLOT]), _read_slot(data[_SLOT:2 * _SLOT])) if slot is not None]
    if not slots:
        raise JournalError(f"{path}: no valid journal header")
    generation, boot = max(slots)
    entries = []
    offset = DATA_START
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        body = data[offset + _FRAME.size:offset + _FRAME.size + length]
        if length < _BODY.size or len(body) != length or zlib.crc32(body) != crc:
            break
        frame_generation, place, id_length, record_length = _BODY.unpack_from(body)
        if frame_generation != generation or place >= len(_PLACES):
            break
        start = _BODY.size
        queue_id = body[start:start + id_length].decode("ascii", "replace")
        record = body[start + id_length:start + id_length + record_length]
        entries.append(JournalEntry(queue_id, _PLACES[place], record, body[start + id_length + record_length:]))
        offset += _FRAME.size + length
    return JournalContents(generation, boot, tuple(entries))


def journal_path(tmp_dir: str, tag: str, pid: int) -> str:
    """The journal of the commit process ``pid`` of the process tagged ``tag``."""
    return os.path.join(tmp_dir, f"{tag}.{pid}{JOURNAL}")


def restore(files: SpoolFiles, entries: tuple[JournalEntry, ...]) -> list[str]:
    """
    Write again every entry of ``entries`` that is in none of queue/, held/, failed/ and
    archive/, or incomplete where it was committed (recovery after another boot; the module
    docstring says why the others are whole).  Unflushed: the caller flushes before the
    journal goes.  Returns the queue ids written.
    """
    layout = files.layout
    restored = []
    for entry in entries:
        home = layout.held if entry.where == "held" else layout.queue
        found = next((d for d in (layout.queue, layout.held, layout.failed, layout.archive)
                      if os.path.exists(SpoolLayout.path(d, entry.queue_id, ENV))), None)
        if found is not None and (found != home or inflight.entry_complete(files, found, entry.queue_id)):
            continue
        message = files.write_temp_file(entry.queue_id, MSG, entry.message, durable=False)
        record = files.write_temp_file(entry.queue_id, ENV, entry.record, durable=False)
        files.ops.rename(message, SpoolLayout.path(home, entry.queue_id, MSG))
        files.ops.rename(record, SpoolLayout.path(home, entry.queue_id, ENV))
        restored.append(entry.queue_id)
    return restored


class IntakeJournal:
    """
    The commit process's journal (see the module docstring).  Blocking; one thread.  ``ops``
    is the spool's (its ``sync_filesystem`` retires a generation); ``clock`` is monotonic.
    """

    def __init__(self, ops: FileOps, path: str, boot: str, size: int = JOURNAL_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ops = ops
        self.path = path
        self._boot = boot
        self._size = size
        self._clock = clock
        self.generation = 1
        self._offset = DATA_START
        #: When the oldest frame not yet retired was written (None: nothing to retire).
        self._unretired_since: Optional[float] = None
        self._fd = ops.open_new(path)
        try:
            # Written, not fallocated: the first write into an unwritten extent changes metadata.
            zeros = bytes(1 << 20)
            for offset in range(0, size, len(zeros)):
                ops.pwrite(self._fd, zeros[:min(len(zeros), size - offset)], offset)
            self._write_header()
        except OSError:
            ops.close(self._fd)
            ops.unlink(path)
            raise

    def _write_header(self) -> None:
        self._ops.pwrite(self._fd, _header(self.generation, self._boot), (self.generation % 2) * _SLOT)
        self._ops.sync_file(self._fd)

    def fits(self, entries: list[JournalEntry]) -> bool:
        """Whether a batch of ``entries`` can be journaled at all (after a retirement if need be)."""
        need = sum(_FRAME.size + _BODY.size + len(e.queue_id) + len(e.record) + len(e.message) for e in entries)
        return DATA_START + need <= self._size

    def append(self, entries: list[JournalEntry]) -> None:
        """Make ``entries`` durable: one write and one ``fdatasync``.  OSError if that failed."""
        data = encode_frames(self.generation, entries)
        if self._offset + len(data) > self._size:
            self.retire()
            data = encode_frames(self.generation, entries)
        self._ops.pwrite(self._fd, data, self._offset)
        self._ops.sync_file(self._fd)
        self._offset += len(data)
        if self._unretired_since is None:
            self._unretired_since = self._clock()

    def retire_in(self) -> Optional[float]:
        """Seconds until the next retirement is due (0: now); None when nothing waits for one."""
        if self._unretired_since is None:
            return None
        return max(0.0, self._unretired_since + RETIRE_AFTER - self._clock())

    def retire(self) -> None:
        """Flush the filesystem (every journaled entry is then durable in place) and start a new generation."""
        if self._unretired_since is None and self._offset == DATA_START:
            return
        try:
            self._ops.sync_filesystem(self._fd)
        except OSError:
            self._unretired_since = self._clock()  # not again at once: after another RETIRE_AFTER
            raise
        self.generation += 1
        self._write_header()
        self._offset = DATA_START
        self._unretired_since = None

    def close(self) -> None:
        """Retire what is left and remove the journal (a clean stop: nothing for recovery to read)."""
        try:
            self.retire()
        finally:
            self._ops.close(self._fd)
        self._ops.unlink(self.path)


__all__ = ["JOURNAL", "JOURNAL_SIZE", "RETIRE_AFTER", "IntakeJournal", "JournalContents", "JournalEntry",
           "JournalError", "boot_id", "journal_path", "read_journal", "restore"]
