"""
Request bodies streamed from the spool file, never assembled in memory (invariant 2).

A body is described by a *source*: a known length plus a way to open a reader over it.
Sources compose: a rewritten header section (L{Literal}) followed by the rest of the message
file (L{FileRange}), wrapped in L{Base64Of} for Graph's MIME format; a MIME part's decoded
content (L{DecodedRange}) for attachment uploads.  L{StreamingBodyProducer} feeds any source
to Twisted's HTTP client 64 KiB at a time with back-pressure (a body of 64 KiB or less at once,
with the headers), and knows when the last byte was
handed over (which makes a later timeout "possibly delivered").
"""

from __future__ import annotations

import base64
import binascii
from typing import Iterator, Optional, Protocol

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.task import CooperativeTask, Cooperator, TaskDone, TaskStopped
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

READ_SIZE = 64 * 1024
_WHITESPACE = b" \t\r\n"


class Reader(Protocol):
    """``read(n)`` returns at most ``n`` bytes (fewer is fine), ``b""`` only at the end."""

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class Source(Protocol):
    """Bytes of a known ``length`` that can be read, from the start, as often as a retry needs."""

    @property
    def length(self) -> int: ...
    def open(self) -> Reader: ...


def base64_length(n: int) -> int:
    """Length of the unwrapped base64 encoding of ``n`` bytes."""
    return 4 * ((n + 2) // 3)


@attrs.frozen
class Literal:
    """Bytes already in memory (small: a rewritten header section, a JSON envelope)."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")

    @property
    def length(self) -> int:
        return len(self.data)

    def open(self) -> Reader:
        return _BytesReader(self.data)


@attrs.frozen
class FileRange:
    """Bytes ``start`` to ``end`` (exclusive) of a file, read when the body is produced."""

    path: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def open(self) -> Reader:
        return _FileRangeReader(self.path, self.start, self.end)


@attrs.frozen
class Concat:
    parts: tuple

    @property
    def length(self) -> int:
        return sum(p.length for p in self.parts)

    def open(self) -> Reader:
        return _ConcatReader(list(self.parts))


@attrs.frozen
class Base64Of:
    """The base64 encoding (no line breaks) of another source."""

    inner: Source

    @property
    def length(self) -> int:
        return base64_length(self.inner.length)

    def open(self) -> Reader:
        return _Base64Reader(self.inner.open())


@attrs.frozen
class DecodedRange:
    """
    The decoded content of a MIME body in ``path[start:end]`` with the given
    Content-Transfer-Encoding.  ``length`` is the decoded size, measured beforehand with
    L{decoded_length} (an upload session must announce it).
    """

    path: str
    start: int
    end: int
    encoding: str
    length: int

    def open(self) -> Reader:
        return open_decoder(FileRange(self.path, self.start, self.end).open(), self.encoding)


def open_decoder(raw: Reader, encoding: str) -> Reader:
    encoding = (encoding or "7bit").lower()
    if encoding == "base64":
        return _Base64DecodeReader(raw)
    if encoding == "quoted-printable":
        return _QuotedPrintableReader(raw)
    return raw


def decoded_length(path: str, start: int, end: int, encoding: str) -> int:
    """Decode a range once, counting bytes (blocking: call it in a thread)."""
    reader = open_decoder(FileRange(path, start, end).open(), encoding)
    total = 0
    try:
        while True:
            chunk = reader.read(READ_SIZE)
            if not chunk:
                return total
            total += len(chunk)
    finally:
        reader.close()


def read_exactly(reader: Reader, n: int) -> bytes:
    """
    Exactly ``n`` bytes, fewer only at the end.  Readers may return short reads but never more
    than asked for (the L{Reader} contract); one that does is a bug that would make an upload
    PUT larger than Graph accepts, so it fails loudly here instead.
    """
    pieces = []
    wanted = n
    while wanted > 0:
        chunk = reader.read(wanted)
        if not chunk:
            break
        if len(chunk) > wanted:
            raise ValueError(f"{type(reader).__name__} returned {len(chunk)} bytes when asked for {wanted}")
        pieces.append(chunk)
        wanted -= len(chunk)
    return b"".join(pieces)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data: Optional[memoryview] = memoryview(data)
        self._pos = 0

    def read(self, n: int) -> bytes:
        if self._data is None:
            return b""
        chunk = bytes(self._data[self._pos:self._pos + n])
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        if self._data is not None:
            self._data.release()
            self._data = None


class _FileRangeReader:
    def __init__(self, path: str, start: int, end: int) -> None:
        self._file = open(path, "rb")
        self._file.seek(start)
        self._left = end - start

    def read(self, n: int) -> bytes:
        if self._left <= 0:
            return b""
        chunk = self._file.read(min(n, self._left))
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._file.close()


class _ConcatReader:
    def __init__(self, parts: list) -> None:
        self._parts = parts
        self._current: Optional[Reader] = None

    def read(self, n: int) -> bytes:
        while True:
            if self._current is None:
                if not self._parts:
                    return b""
                self._current = self._parts.pop(0).open()
            chunk = self._current.read(n)
            if chunk:
                return chunk
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        self._parts = []


class _BufferedOutput:
    """
    Hands out a coder's output at most ``n`` bytes at a time (the L{Reader} contract).  A coder
    turns one read of its input into however many bytes that gives (about 48 KiB decoded from
    64 KiB of base64); the surplus waits here for the next read instead of being returned too.
    """

    def __init__(self) -> None:
        self._out = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        while self._pos >= len(self._out):
            piece = self._decode_next()
            if not piece:
                return b""
            self._out, self._pos = piece, 0
        chunk = self._out[self._pos:self._pos + n]
        self._pos += len(chunk)
        return chunk

    def _decode_next(self) -> bytes:
        raise NotImplementedError


class _Base64Reader(_BufferedOutput):
    """Encodes in multiples of 3 input bytes so padding only ever appears at the very end."""

    def __init__(self, inner: Reader) -> None:
        super().__init__()
        self._inner = inner
        self._done = False

    def _decode_next(self) -> bytes:
        if self._done:
            return b""
        want = (READ_SIZE // 4) * 3
        raw = read_exactly(self._inner, want)
        if len(raw) < want:
            self._done = True
        return base64.b64encode(raw)

    def close(self) -> None:
        self._inner.close()


class _Base64DecodeReader(_BufferedOutput):
    def __init__(self, inner: Reader) -> None:
        super().__init__()
        self._inner = inner
        self._carry = b""

    def _decode_next(self) -> bytes:
        while True:
            raw = self._inner.read(READ_SIZE)  # small reads: big temporaries fragment the heap
            if not raw:
                data, self._carry = self._carry, b""
                if not data:
                    return b""
                data = data.rstrip(b"=")
                data += b"=" * (-len(data) % 4)
                try:
                    return binascii.a2b_base64(data)
                except binascii.Error:
                    return b""
            data = self._carry + raw.translate(None, _WHITESPACE)
            cut = len(data) - len(data) % 4
            self._carry = data[cut:]
            if cut:
                try:
                    decoded = binascii.a2b_base64(data[:cut])
                except binascii.Error:
                    # Garbage in a base64 part: decode leniently rather than fail the upload.
                    decoded = base64.b64decode(data[:cut] + b"==", validate=False)
                if decoded:  # b"" would read as the end of the content
                    return decoded

    def close(self) -> None:
        self._inner.close()


class _QuotedPrintableReader(_BufferedOutput):
    """Decodes line by line, keeping a partial line (and a dangling ``=``) for the next read."""

    def __init__(self, inner: Reader) -> None:
        super().__init__()
        self._inner = inner
        self._carry = b""

    def _decode_next(self) -> bytes:
        while True:
            raw = self._inner.read(READ_SIZE)
            if not raw:
                data, self._carry = self._carry, b""
                return binascii.a2b_qp(data) if data else b""
            data = self._carry + raw
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                self._carry = data
                continue
            self._carry = data[cut:]
            decoded = binascii.a2b_qp(data[:cut])
            if decoded:
                return decoded

    def close(self) -> None:
        self._inner.close()


@implementer(IBodyProducer)
class StreamingBodyProducer:
    """
    Produces a source into Twisted's HTTP client.  ``length`` is exact, so the request carries
    a Content-Length (Graph wants one, and chunked uploads are not accepted everywhere).
    ``finished`` turns true once every byte was written: a failure after that point may have
    reached Graph.  Reads happen in the reactor thread a slice at a time through a Cooperator,
    as twisted.web.client.FileBodyProducer does.
    """

    def __init__(self, source: Source, cooperator: Cooperator, read_size: int = READ_SIZE) -> None:
        self._source: Optional[Source] = source
        self._cooperator = cooperator
        self._read_size = read_size
        self.length = source.length
        self.finished = False
        self._task: Optional[CooperativeTask] = None
        self._reader: Optional[Reader] = None

    def startProducing(self, consumer: IConsumer) -> Deferred:
        assert self._source is not None, "a body producer is produced once"
        self._reader = self._source.open()
        # Twisted's client keeps the request (and so this producer) around after the answer;
        # dropping the source lets an upload chunk's bytes go as soon as they are written.
        self._source = None
        if self.length <= self._read_size:
            return self._write_at_once(consumer)
        self._task = self._cooperator.cooperate(self._write_all(consumer))
        d = self._task.whenDone()

        def done(result: object) -> None:
            self.finished = True
            self._close()

        def stopped(failure: Failure) -> Deferred:
            self._close()
            failure.trap(TaskStopped)
            # twisted.web expects the Deferred never to fire after stopProducing.
            return Deferred()

        d.addCallbacks(done, stopped)
        return d

    def _write_at_once(self, consumer: IConsumer) -> Deferred:
        """
        A body of one slice or less (most mail) is written now, in the same reactor turn as the
        request's headers: no Cooperator step on the next turn, and headers and body leave in
        one TLS flush.  At 40 sends in flight each extra turn was a wait behind the other
        connections' work (bench_drain).
        """
        assert self._reader is not None
        try:
            chunks = []
            while chunk := self._reader.read(self._read_size):
                chunks.append(chunk)
            consumer.write(b"".join(chunks))
        except Exception:  # noqa: BLE001 - the request fails as a transport error, body not sent
            self._close()
            return fail()
        self.finished = True
        self._close()
        return succeed(None)

    def _write_all(self, consumer: IConsumer) -> Iterator[None]:
        assert self._reader is not None
        while True:
            chunk = self._reader.read(self._read_size)
            if not chunk:
                return
            consumer.write(chunk)
            yield None

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def pauseProducing(self) -> None:
        if self._task is not None and not self.finished:
            try:
                self._task.pause()
            except (TaskDone, TaskStopped):
                pass

    def resumeProducing(self) -> None:
        if self._task is not None and not self.finished:
            try:
                self._task.resume()
            except (TaskDone, TaskStopped):
                pass

    def stopProducing(self) -> None:
        if self._task is not None:
            try:
                self._task.stop()
            except Exception:  # noqa: BLE001 - already finished or stopped
                pass
        self._close()


def cooperator_for(reactor: IReactorTime) -> Cooperator:
    """A Cooperator scheduled on ``reactor`` (not the global one), for body producers."""
    return Cooperator(scheduler=lambda f: reactor.callLater(0, f))


__all__ = [
    "Literal", "FileRange", "Concat", "Base64Of", "DecodedRange", "StreamingBodyProducer",
    "base64_length", "decoded_length", "read_exactly", "open_decoder", "cooperator_for",
]
