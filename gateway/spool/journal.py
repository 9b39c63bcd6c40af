"""
The intake journal: how the commit process makes a batch durable with one flush that changes
no metadata.

Why: a batch made durable by ``syncfs`` makes the filesystem commit its own journal (two new
files and two renames per message), and on the journaled test disk that costs 0.9-1.0 ms for a
lone 10 KB commit, where Postfix's one ``fsync`` of one new file costs 0.3 ms.  Blocks that are
already allocated and written change no metadata when they are written again, so an
``fdatasync`` of them is the data and one device flush (``bench/commit_costs.py`` measures the
three).

So the commit process (L{gateway.spool.commit_process}) keeps a journal,
``tmp/<tag>.<n>.journal`` (its parent's tag, the how-manieth child), allocated and zero-filled
when it starts.  A batch's temp files are written as before
(L{gateway.spool.accept.Acceptor.publish_batch}); then every entry's record and message are
appended to the journal in one write, one ``fdatasync`` of the journal makes the batch durable,
the entries are renamed into place (no marker: until it is retired, the journal holds each of
them whole), and the 250s go out.  At most L{RETIRE_AFTER} seconds later (sooner when it is
full) the child flushes the filesystem (``syncfs``): the entries are then durable in place, and
the journal starts a new generation.  Frames of older generations are never read again.  When
the child stops it retires the journal and removes it.

After a crash the journal is read at start-up (L{gateway.spool.recovery}) before anything else
(L{mend}):

- **Same boot** (a process died, the kernel did not): the page cache kept every write, but a
  write the kernel failed to put on disk is in it too, marked clean, and a flush by a process
  that opened the filesystem later is not told of it.  So every message file of the journal's
  entries, wherever it has moved (queue/, held/, failed/, archive/: hold, fail and archive
  rename it), and the home record while it holds the journal's bytes, is written again from
  the journal, and flushed.  An entry in none of those places was removed on purpose
  (delivered, or undone with a 451) and stays gone.
- **Another boot** (power loss, kernel crash): a message file that does not hold the journal's
  bytes and a home record that does not decode are written again, and an entry in none of
  those places is written again whole at home.

Then the filesystem is flushed and the journal removed.  The one case replay cannot tell from
a lost entry: one delivered (removed) after its acceptance but before its frame was retired,
then a power loss.  It is sent again: a second delivery, never a lost one, in the
L{RETIRE_AFTER} after its acceptance.

A journal kept for start-up (below) widens that window: if the next start-up is on another
boot, the entries of its last generation (at most L{RETIRE_AFTER} of intake, or one full journal)
that were delivered or deleted since are written again and sent a second time; none is lost.
Entries set aside in quarantine/ since are not brought back.

While the daemon runs, nothing writes the entries' files again (the queue runner may be acting
on them).  A journal whose child died is removed by the parent (L{gateway.spool.accept.Acceptor.undo}),
and a dead worker's by the intake supervisor, after a flush of the filesystem through a
descriptor opened *before* that child or worker started: a write the kernel failed since then
is reported to it, and the journal then stays for start-up.  A retirement or an append that
fails stops the journal the same way: no more batches, and it stays for start-up.

Format.  Two header slots of 512 bytes at offsets 0 and 512, written alternately (a torn
header write leaves the other): L{_HEADER} (magic, generation, flags (none yet), crc32) and the
boot id.  The valid slot with the higher generation counts.  Frames from L{DATA_START}: length and
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

from gateway.spool.fileops import FileOps, quietly
from gateway.spool.layout import ENV, MSG, SpoolFiles, SpoolLayout
from gateway.spool.record import RecordError, decode_record

JOURNAL = ".journal"
#: Space allocated per commit process; a batch that does not fit commits without the journal.
JOURNAL_SIZE = 8 * 1024 * 1024
#: How long an entry waits at most, after its 250, for the flush that retires its frame.
RETIRE_AFTER = 0.1
DATA_START = 4096
_SLOT = 512
_MAGIC = b"GSJ1"
_HEADER = struct.Struct("!4sQBI")  # magic, generation, flags, crc32 (of the slot with the crc 0)
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


def _header_crc(generation: int, flags: int, boot_bytes: bytes) -> int:
    return zlib.crc32(_HEADER.pack(_MAGIC, generation, flags, 0) + boot_bytes)


def _header(generation: int, boot: str, flags: int = 0) -> bytes:
    boot_bytes = boot.encode("ascii")
    return _HEADER.pack(_MAGIC, generation, flags, _header_crc(generation, flags, boot_bytes)) + boot_bytes


def _read_slot(data: bytes) -> Optional[tuple[int, str, int]]:
    """(generation, boot id, flags) of a valid header slot, else None."""
    if len(data) < _HEADER.size + _BOOT_ID_LENGTH:
        return None
    magic, generation, flags, crc = _HEADER.unpack_from(data)
    boot_bytes = data[_HEADER.size:_HEADER.size + _BOOT_ID_LENGTH]
    if magic != _MAGIC or crc != _header_crc(generation, flags, boot_bytes):
        return None
    try:
        return generation, boot_bytes.decode("ascii"), flags
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


def _read_header(path: str, data: bytes) -> tuple[int, str]:
    """(generation, boot id) from the first two slots of ``data``."""
    slots = [slot for slot in (_read_slot(data[0:_SLOT]), _read_slot(data[_SLOT:2 * _SLOT])) if slot is not None]
    if not slots:
        raise JournalError(f"{path}: no valid journal header")
    generation, boot, _ = max(slots)
    return generation, boot


def read_journal(path: str) -> JournalContents:
    """The current generation's entries of the journal at ``path``; L{JournalError} if no header is valid."""
    with open(path, "rb") as f:
        data = f.read()
    generation, boot = _read_header(path, data)
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


def journal_path(tmp_dir: str, tag: str, serial: int) -> str:
    """The journal of the ``serial``-th commit process of the process tagged ``tag`` (never reused)."""
    return os.path.join(tmp_dir, f"{tag}.{serial}{JOURNAL}")


def mend(files: SpoolFiles, entries: tuple[JournalEntry, ...], same_boot: bool) -> list[str]:
    """
    Write again from the journal what its entries may have lost (see the module docstring);
    unflushed: the caller flushes before the journal goes.  Returns the queue ids it wrote
    anything for.
    """
    set_aside = set() if same_boot else _quarantined_ids(files)
    return [entry.queue_id for entry in entries if _mend_entry(files, entry, same_boot, set_aside)]


def _mend_entry(files: SpoolFiles, entry: JournalEntry, same_boot: bool, set_aside: set[str]) -> bool:
    layout = files.layout
    places = (layout.queue, layout.held, layout.failed, layout.archive)
    queue_id = entry.queue_id
    messages = [SpoolLayout.path(place, queue_id, MSG) for place in places]
    mended = [path for path in messages
              if os.path.exists(path) and (same_boot or not _holds(path, entry.message))]
    for path in mended:
        _write_again(files, queue_id, MSG, entry.message, path)
    if any(os.path.exists(SpoolLayout.path(place, queue_id, ENV)) for place in places):
        return _mend_home_record(files, entry, same_boot) or bool(mended)
    if same_boot or queue_id in set_aside:
        return bool(mended)  # in no place: removed (or set aside) on purpose
    home = layout.destination(entry.where)
    if not any(os.path.exists(path) for path in messages):
        _write_again(files, queue_id, MSG, entry.message, SpoolLayout.path(home, queue_id, MSG))
    _write_again(files, queue_id, ENV, entry.record, SpoolLayout.path(home, queue_id, ENV))
    return True


def _mend_home_record(files: SpoolFiles, entry: JournalEntry, same_boot: bool) -> bool:
    """The record at home, if it is there and still the journal's (same boot) or does not decode."""
    record = SpoolLayout.path(files.layout.destination(entry.where), entry.queue_id, ENV)
    if not os.path.exists(record):
        return False
    if (same_boot and _holds(record, entry.record)) or not _decodes(files, record, entry.queue_id):
        _write_again(files, entry.queue_id, ENV, entry.record, record)
        return True
    return False


def _holds(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


def _decodes(files: SpoolFiles, path: str, queue_id: str) -> bool:
    try:
        decode_record(files.ops.read_file(path), path[:-len(ENV)] + MSG, queue_id)
    except (OSError, RecordError):
        return False
    return True


def _quarantined_ids(files: SpoolFiles) -> set[str]:
    """The queue ids quarantine/ holds a file of (set aside since: not to be brought back), listed once."""
    try:
        return {name.partition(".")[0] for name in os.listdir(files.layout.quarantine)}
    except FileNotFoundError:
        return set()


def _write_again(files: SpoolFiles, queue_id: str, suffix: str, data: bytes, path: str) -> None:
    """``data`` into ``path`` whole or not at all: a temp file renamed over it."""
    temp = files.write_temp_file(queue_id, suffix, data, durable=False)
    try:
        files.ops.rename(temp, path)
    except OSError:
        quietly(files.ops.unlink, temp)
        raise


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
        #: It could not be written or retired: it takes no more batches, and stays for start-up.
        self.broken = False
        self._fd = ops.open_new(path)
        try:
            # The header first (a child killed while it fills the space leaves a readable,
            # empty journal); the space written, not fallocated: the first write into an
            # unwritten extent changes metadata.
            ops.pwrite(self._fd, _header(self.generation, boot), (self.generation % 2) * _SLOT)
            zeros = bytes(1 << 20)
            for offset in range(DATA_START, size, len(zeros)):
                ops.pwrite(self._fd, zeros[:min(len(zeros), size - offset)], offset)
            ops.sync_file(self._fd)
            ops.sync_dir(os.path.dirname(path))  # its name too: its first batch is answered before any syncfs
        except OSError:
            ops.close(self._fd)
            ops.unlink(path)
            raise

    @property
    def usable(self) -> bool:
        return not self.broken

    def fits(self, entries: list[JournalEntry]) -> bool:
        """Whether a batch of ``entries`` can be journaled at all (after a retirement if need be)."""
        need = sum(_FRAME.size + _BODY.size + len(e.queue_id) + len(e.record) + len(e.message) for e in entries)
        return not self.broken and DATA_START + need <= self._size

    def append(self, entries: list[JournalEntry]) -> None:
        """
        Make ``entries`` durable: one write and one ``fdatasync``.  OSError if that failed: the
        journal then takes no more batches (a frame after the failed ones could not be read
        back past them), and stays for start-up.
        """
        data = encode_frames(self.generation, entries)
        if self._offset + len(data) > self._size:
            self.retire()
            data = encode_frames(self.generation, entries)
        if self._unretired_since is None:
            self._unretired_since = self._clock()
        try:
            self._ops.pwrite(self._fd, data, self._offset)
            self._ops.sync_file(self._fd)
        except OSError:
            self._break()
            raise
        self._offset += len(data)

    def retire_in(self) -> Optional[float]:
        """Seconds until the next retirement is due (0: now); None when nothing waits for one."""
        if self._unretired_since is None:
            return None
        return max(0.0, self._unretired_since + RETIRE_AFTER - self._clock())

    def retire(self) -> None:
        """
        Flush the filesystem (every journaled entry is then durable in place) and start a new
        generation.  If the flush fails (the kernel reports a failed write once, and leaves its
        pages clean in memory, so no later flush can vouch for them) or the new header cannot be
        written, the journal takes no more batches and stays for start-up; OSError.
        """
        if self.broken or (self._unretired_since is None and self._offset == DATA_START):
            return
        try:
            self._ops.sync_filesystem(self._fd)
            self._ops.pwrite(self._fd, _header(self.generation + 1, self._boot), ((self.generation + 1) % 2) * _SLOT)
            self._ops.sync_file(self._fd)
        except OSError:
            self._break()
            raise
        self.generation += 1
        self._offset = DATA_START
        self._unretired_since = None

    def _break(self) -> None:
        self.broken = True
        self._unretired_since = None  # no retirement loop

    def close(self) -> None:
        """The child stops: retire what is left and remove the journal; a broken one stays for start-up."""
        try:
            self.retire()
        finally:
            self._ops.close(self._fd)
        if not self.broken:
            self._ops.unlink(self.path)


__all__ = ["JOURNAL", "JOURNAL_SIZE", "RETIRE_AFTER", "IntakeJournal", "JournalContents", "JournalEntry",
           "JournalError", "boot_id", "journal_path", "mend", "read_journal"]
