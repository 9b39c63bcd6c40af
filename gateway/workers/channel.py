"""
What a worker tells the main process, and how: the descriptor numbers both sides agree on, the
commit notices (one queue id per line; intake reports, JSON objects, share the pipe), and the
worker's log events (JSON text sequences, L{gateway.workers.log_relay}, re-emitted by the main
process into its own log with the worker's pid).

A commit notice is written *before* the client gets its 250 (the spool's commit listeners run
before the protocol's reply), straight into the pipe when it has room — a line is far below
PIPE_BUF, so it is written whole or not at all — and otherwise queued on a non-blocking writer
so the worker's reactor never waits for the main process.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any, Callable, Optional

from twisted.internet import abstract, fdesc

#: Descriptor numbers in a worker (the main process maps its pipes and sockets onto these).
CONTROL_FD = 0  # the main process's end stays open while it lives: EOF means it is gone
LOG_FD = 3
NOTIFY_FD = 4
LOCK_FD = 5
FIRST_LISTENER_FD = 6

_QUEUE_ID_LINE = re.compile(rb"^[0-9A-Z]{19}$")


class _PipeWriter(abstract.FileDescriptor):
    """A non-blocking pipe end that buffers what does not fit (written as the reader drains it)."""

    def __init__(self, reactor: Any, fd: int) -> None:
        super().__init__(reactor)
        self._fd = fd
        fdesc.setNonBlocking(fd)
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def writeSomeData(self, data: bytes) -> Any:
        return fdesc.writeToFD(self._fd, data)

    @property
    def idle(self) -> bool:
        return not self.dataBuffer and not self._tempDataBuffer


class EndOfFileWatch(abstract.FileDescriptor):
    """Calls ``gone`` when the other end of the pipe ``fd`` closes (what arrives is ignored)."""

    def __init__(self, reactor: Any, fd: int, gone: Callable[[], None]) -> None:
        super().__init__(reactor)
        self._fd = fd
        self._gone = gone
        fdesc.setNonBlocking(fd)
        self.connected = 1
        self.startReading()

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self._fd, lambda data: None)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._gone()


class CommitNotifier:
    """
    Worker side: tells the main process each queue id this worker committed into queue/, and
    carries its intake reports (L{gateway.workers.reports}) on the same pipe.  A line goes
    straight into the pipe when nothing is queued before it; what does not fit (a full pipe, or
    the rest of a report longer than PIPE_BUF) is queued, and every later line queues behind it,
    so lines never interleave.
    """

    def __init__(self, reactor: Any, fd: int = NOTIFY_FD) -> None:
        self._writer = _PipeWriter(reactor, fd)

    def committed(self, entry: Any) -> None:
        self.send(entry.queue_id.encode("ascii") + b"\n")

    def send(self, line: bytes) -> None:
        written = 0
        if self._writer.idle:
            try:
                written = os.write(self._writer.fileno(), line)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
            if written == len(line):
                return
        self._writer.write(line[written:])


class LineSplitter:
    """Main side: bytes from a pipe in, whole records out (``separator`` ends or starts one)."""

    def __init__(self, deliver: Callable[[bytes], None], separator: bytes = b"\n") -> None:
        self._deliver = deliver
        self._separator = separator
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        *records, self._buffer = (self._buffer + data).split(self._separator)
        for record in records:
            if record.strip():
                self._deliver(record)

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def flush(self) -> None:
        """The pipe closed: deliver a last record that lacked its terminator."""
        rest = self.rest()
        if rest.strip():
            self._deliver(rest)


def queue_id_of(line: bytes) -> Optional[str]:
    """The queue id a commit notice names, or None for anything else."""
    line = line.strip()
    return line.decode("ascii") if _QUEUE_ID_LINE.match(line) else None


__all__ = ["CommitNotifier", "EndOfFileWatch", "LineSplitter", "queue_id_of",
           "CONTROL_FD", "LOG_FD", "NOTIFY_FD", "LOCK_FD", "FIRST_LISTENER_FD"]
