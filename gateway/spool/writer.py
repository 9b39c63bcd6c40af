"""
The spool writer: one per SMTP transaction, streaming the message into a temp file.

Writes are buffered on the reactor thread and handed to the spool's thread pool in order, one
job at a time per writer (so chunks can never reach the file out of order).  A small message
never touches a thread of its own: at commit it is handed, still in memory, to the spool's
group commit (L{gateway.spool.group_commit}), whose single job writes it with every other
message committed meanwhile and shares one data flush and one directory fsync among them.  A big message is written in
chunks of ``chunk_size`` while it arrives; if the disk falls behind by more than
``high_water`` bytes the writer calls ``pause`` (the SMTP transport stops reading) and calls
``resume`` once the backlog is below ``low_water``, so memory stays flat however large the
message and however slow the disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.spool.disk import CommitRequest, TempMessage
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.interfaces import ISpoolWriter, SpoolError

if TYPE_CHECKING:
    from gateway.spool.store import DirectorySpool

CHUNK_SIZE = 256 * 1024
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
_HEADER_END = b"\r\n\r\n"


@implementer(ISpoolWriter)
class DirectorySpoolWriter:
    log = Logger()

    def __init__(self, spool: "DirectorySpool", queue_id: str, chunk_size: int = CHUNK_SIZE,
                 high_water: int = HIGH_WATER, low_water: int = LOW_WATER) -> None:
        self.queue_id = queue_id
        self.bytes_written = 0
        self.temp_path: Optional[str] = None
        self._spool = spool
        self._chunk_size = chunk_size
        self._high_water = high_water
        self._low_water = low_water
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._temp: Optional[TempMessage] = None
        self._busy = False
        self._idle_waiters: list[Deferred] = []
        self._error: Optional[SpoolError] = None
        self._state = "open"
        self._pause: Optional[Callable[[], None]] = None
        self._resume: Optional[Callable[[], None]] = None
        self._paused = False
        self._header_end: Optional[int] = None
        self._header_tail = b""

    # -- ISpoolWriter ----------------------------------------------------------------------

    def set_flow_control(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause, self._resume = pause, resume

    def write(self, data: bytes) -> None:
        if self._state != "open" or self._error is not None or not data:
            return
        if self._header_end is None:
            self._track_header(data)
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.bytes_written += len(data)
        if not self._busy and self._pending_bytes >= self._chunk_size:
            self._write_in_background()
        if not self._paused and self._pending_bytes > self._high_water and self._pause is not None:
            self._paused = True
            self._pause()

    def flush(self) -> Deferred:
        if self._state != "open":
            return fail(SpoolError("spool writer is closed"))

        def write_rest(_: Any) -> Deferred:
            self._raise_if_failed()
            return self._run_exclusive(self._write_job, self._take_pending())

        def done(_: Any) -> None:
            self._raise_if_failed()
            assert self._temp is not None
            self.temp_path = self._temp.path

        return self._idle().addCallback(write_rest).addCallback(done)

    def commit(self, envelope: Envelope, provenance: Provenance, header_section: Optional[bytes] = None,
               sending_mailbox: Optional[str] = None) -> Deferred:
        if self._state != "open":
            return fail(SpoolError("spool writer is closed"))
        self._state = "committing"
        node = self._spool.disk.node
        if provenance.node is None and node:
            provenance = provenance.at_node(node)
        entry = SpoolEntry(queue_id=self.queue_id, envelope=envelope, provenance=provenance,
                           received_at=self._spool.clock.seconds(), message_path="", size=0,
                           sending_mailbox=sending_mailbox)
        where = "held" if self._spool.hold_new else "queue"

        def go(_: Any) -> Deferred:
            self._raise_if_failed()
            if self._temp is None:
                # Still all in memory: the group commit writes it, no thread hop of its own.
                return self._spool._group_commit(CommitRequest(
                    entry, where, data=self._in_memory_message(header_section)))
            # Streamed: the rest of the chunks and any header edit first, then the group commit.
            return self._run_exclusive(self._finish_job, self._take_pending(), header_section).addCallback(
                lambda _: self._spool._group_commit(CommitRequest(entry, where, temp=self._temp)))

        def committed(entry: SpoolEntry) -> SpoolEntry:
            self._closed()
            if where == "queue":
                self._spool._committed(entry)  # held entries wait for a release, not the runner
            return entry

        def failed(reason: Failure) -> Deferred:
            self._closed()
            return self._discard().addBoth(lambda _: reason)

        if self._busy:
            started = self._idle().addCallback(go)
        else:
            # Idle (always so for a small message): straight into the group commit, without an
            # already-fired Deferred in front of it to chain through.
            started = maybeDeferred(go, None)
        return started.addCallbacks(committed, failed)

    def abort(self) -> Deferred:
        if self._state != "open":
            return succeed(None)  # closed already, or commit() owns the clean-up
        self._closed()
        self._take_pending()
        return self._idle().addCallback(lambda _: self._discard())

    # -- jobs (run in the spool thread pool, one at a time) --------------------------------

    def _write_job(self, chunks: list[bytes]) -> None:
        disk = self._spool.disk
        if self._temp is None:
            self._temp = disk.create_temp(self.queue_id)
        disk.append(self._temp, chunks)

    def _in_memory_message(self, header_section: Optional[bytes]) -> bytes:
        """The whole message from the pending chunks, with the header edit applied."""
        data = b"".join(self._take_pending())
        if header_section is not None:
            end = self._header_end if self._header_end is not None else len(data)
            data = header_section + data[end:]
        return data

    def _finish_job(self, chunks: list[bytes], header_section: Optional[bytes]) -> None:
        disk = self._spool.disk
        assert self._temp is not None
        disk.append(self._temp, chunks)
        if header_section is not None:
            end = self._header_end if self._header_end is not None else self._temp.size
            disk.replace_header_section(self._temp, end, header_section)

    def _discard_job(self) -> None:
        if self._temp is not None:
            self._spool.disk.discard(self._temp)

    # -- plumbing --------------------------------------------------------------------------

    def _track_header(self, data: bytes) -> None:
        window = self._header_tail + data
        found = window.find(_HEADER_END)
        if found >= 0:
            self._header_end = self.bytes_written - len(self._header_tail) + found + len(_HEADER_END)
            self._header_tail = b""
        else:
            self._header_tail = window[-3:]

    def _take_pending(self) -> list[bytes]:
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        return chunks

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run_exclusive(self, job: Callable[..., Any], *args: Any) -> Deferred:
        """Run ``job`` in the pool; no other job of this writer runs until it finishes."""
        if self._busy:
            return self._idle().addCallback(lambda _: self._run_exclusive(job, *args))
        self._busy = True

        def finished(result: Any) -> Any:
            self._busy = False
            if isinstance(result, Failure):
                if not result.check(SpoolError):
                    self.log.failure("unexpected error in spool writer {queue_id}", result, queue_id=self.queue_id)
                    result = Failure(SpoolError("spool write failed unexpectedly"))
                if self._error is None:
                    self._error = result.value
                self._take_pending()
            self._after_job()
            return result

        return self._spool._in_pool(job, *args).addBoth(finished)

    def _write_in_background(self) -> None:
        # The error is kept in self._error and reported by flush()/commit().
        self._run_exclusive(self._write_job, self._take_pending()).addErrback(lambda _: None)

    def _after_job(self) -> None:
        if self._state == "open" and self._error is None and self._pending_bytes >= self._chunk_size:
            self._write_in_background()
        if self._paused and (self._pending_bytes < self._low_water or self._error is not None or self._state != "open"):
            self._paused = False
            if self._resume is not None:
                self._resume()
        # One waiter at a time: the first may start a job, and the rest must then wait for it.
        while not self._busy and self._idle_waiters:
            self._idle_waiters.pop(0).callback(None)

    def _idle(self) -> Deferred:
        if not self._busy:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        return d

    def _closed(self) -> None:
        self._state = "closed"
        self.temp_path = None

    def _discard(self) -> Deferred:
        if self._temp is None:
            return succeed(None)
        return self._run_exclusive(self._discard_job).addErrback(
            lambda f: self.log.failure("could not discard {queue_id}", f, queue_id=self.queue_id))


__all__ = ["DirectorySpoolWriter", "CHUNK_SIZE", "HIGH_WATER", "LOW_WATER"]
