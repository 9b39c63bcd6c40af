"""
An in-memory L{ISpool} for unit tests of code that writes into the spool (SMTP intake,
sendmail) where durability itself is not under test.  It keeps committed messages as bytes,
so it is only for small test messages.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
from typing import Callable, Optional

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.interfaces import ISpool, ISpoolWriter, SpoolError


@implementer(ISpoolWriter)
@attrs.define
class MemorySpoolWriter:
    spool: "MemorySpool"
    queue_id: str
    buffer: io.BytesIO = attrs.field(factory=io.BytesIO)
    bytes_written: int = 0
    aborted: bool = False
    committed: bool = False
    temp_path: Optional[str] = None

    def set_flow_control(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.buffer.write(data)
        self.bytes_written += len(data)

    def flush(self) -> Deferred:
        """Make what was written readable at ``temp_path`` (a real temporary file)."""
        fd, self.temp_path = tempfile.mkstemp(prefix="memspool-")
        with os.fdopen(fd, "wb") as f:
            f.write(self.buffer.getvalue())
        return succeed(None)

    def commit(self, envelope: Envelope, provenance: Provenance, header_section: Optional[bytes] = None,
               sending_mailbox: Optional[str] = None) -> Deferred:
        if self.spool.fail_with is not None:
            return fail(self.spool.fail_with)
        data = self.buffer.getvalue()
        if header_section is not None:
            end = data.find(b"\r\n\r\n")
            data = header_section + (data[end + 4:] if end >= 0 else b"")
        self.committed = True
        entry = SpoolEntry(
            queue_id=self.queue_id, envelope=envelope, provenance=provenance,
            received_at=0.0, message_path="", size=len(data), sending_mailbox=sending_mailbox,
        )
        self.spool.messages.append((entry, data))
        self._cleanup()
        return succeed(entry)

    def abort(self) -> Deferred:
        self.aborted = True
        self._cleanup()
        return succeed(None)

    def _cleanup(self) -> None:
        if self.temp_path:
            os.unlink(self.temp_path)
            self.temp_path = None


@implementer(ISpool)
@attrs.define
class MemorySpool:
    """Committed messages land in ``messages`` as ``(SpoolEntry, bytes)``; set ``fail_with``
    to a L{SpoolError} to make commits fail (disk full)."""

    messages: list = attrs.field(factory=list)
    writers: list = attrs.field(factory=list)
    fail_with: Optional[SpoolError] = None
    _ids: itertools.count = attrs.field(factory=itertools.count)

    def open_writer(self) -> Deferred:
        writer = MemorySpoolWriter(self, f"MEM{next(self._ids):06d}")
        self.writers.append(writer)
        return succeed(writer)

    def recover(self) -> Deferred:
        return succeed([entry for entry, _ in self.messages])

    def load(self, queue_id: str) -> Deferred:
        for entry, _ in self.messages:
            if entry.queue_id == queue_id:
                return succeed(entry)
        return fail(KeyError(queue_id))

    def update(self, entry: SpoolEntry) -> Deferred:
        return succeed(entry)

    def remove(self, entry: SpoolEntry) -> Deferred:
        self.messages = [(e, d) for e, d in self.messages if e.queue_id != entry.queue_id]
        return succeed(None)

    def fail(self, entry: SpoolEntry, reason: str) -> Deferred:
        return self.remove(entry)


__all__ = ["MemorySpool", "MemorySpoolWriter"]
