#!/usr/bin/env python
"""
The floor for ``compare_postfix.py --plain-twisted``: Twisted's own ESMTP server with the
least a durable intake needs, and nothing else.

It answers one question the side-by-side table raises: how close can a Twisted server come to
Postfix on this machine at all?  So it does only what durable acceptance must: every message
is written into one new file, flushed (``fdatasync``), renamed into ``held/`` and the
directory fsynced, in the reactor's thread pool, before the 250.  No policy, no record, no
logging per message, no limits, no group commit.  The gap between this server and graphsmtp
is what graphsmtp's features cost; the gap between this server and Postfix is what one
Python process on Twisted costs.

    python bench/plain_twisted.py --port 2525 --spool /var/tmp/plain
    python bench/plain_twisted.py --port 2525 --spool /var/tmp/plain --processes 2

``--processes N`` starts N-1 more processes listening on the same port (``SO_REUSEPORT``), each
with its own reactor: what a Twisted server gets out of the machine's cores.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
from typing import Callable, Iterator

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.mail import smtp
from zope.interface import implementer


class DurableFiles:
    """New message files in ``spool/tmp``, made durable and renamed into ``spool/held``."""

    def __init__(self, spool: str) -> None:
        self.tmp = os.path.join(spool, "tmp")
        self.held = os.path.join(spool, "held")
        os.makedirs(self.tmp, exist_ok=True)
        os.makedirs(self.held, exist_ok=True)
        self._held_fd = os.open(self.held, os.O_RDONLY | os.O_DIRECTORY)
        self._names: Iterator[int] = itertools.count()

    def commit(self, data: bytes) -> None:
        """Blocking: the reactor's thread pool runs it, one message per call."""
        name = f"{os.getpid()}-{next(self._names)}.msg"
        path = os.path.join(self.tmp, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(path, os.path.join(self.held, name))
        os.fsync(self._held_fd)


@implementer(smtp.IMessage)
class Message:
    """One message for one recipient, collected in memory (the 10 KB cells' messages are small)."""

    def __init__(self, commit: Callable[[bytes], None]) -> None:
        self._commit = commit
        self._lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self._lines.append(line)

    def eomReceived(self) -> Deferred:
        return threads.deferToThread(self._commit, b"\r\n".join(self._lines) + b"\r\n")

    def connectionLost(self) -> None:
        self._lines = []


@implementer(smtp.IMessageDelivery)
class Delivery:
    """Every sender and recipient is accepted: the floor measures intake, not policy."""

    def __init__(self, files: DurableFiles) -> None:
        self._files = files

    def receivedHeader(self, helo: tuple[bytes, bytes], origin: smtp.Address,
                       recipients: list[smtp.User]) -> None:
        return None

    def validateFrom(self, helo: tuple[bytes, bytes], origin: smtp.Address) -> smtp.Address:
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], Message]:
        return lambda: Message(self._files.commit)


class PlainFactory(ServerFactory):
    """Twisted's own ESMTP protocol, as it comes, with the durable delivery above."""

    def __init__(self, files: DurableFiles) -> None:
        self._files = files

    def buildProtocol(self, addr: object) -> smtp.ESMTP:
        protocol = smtp.ESMTP()
        protocol.delivery = Delivery(self._files)
        protocol.factory = self
        return protocol


def listen(port: int) -> socket.socket:
    """The listening socket; SO_REUSEPORT lets every process have its own, the kernel spreading connections."""
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listening.bind(("127.0.0.1", port))
    listening.listen(128)
    listening.setblocking(False)
    return listening


def main() -> None:
    """Listen, start the other processes, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", required=True, help="directory for tmp/ and held/")
    parser.add_argument("--processes", type=int, default=1, help="processes accepting on the port (default 1)")
    options = parser.parse_args()
    listening = listen(options.port)
    for _ in range(options.processes - 1):
        # Started, not forked: this process's reactor already exists, and a fork would share it.
        child = subprocess.Popen([sys.executable, __file__, "--port", str(options.port), "--spool", options.spool])
        # The benchmark stops this process; it stops the others.
        reactor.addSystemEventTrigger("before", "shutdown", child.terminate)  # type: ignore[attr-defined]
    reactor.adoptStreamPort(listening.fileno(), socket.AF_INET,  # type: ignore[attr-defined]
                            PlainFactory(DurableFiles(options.spool)))
    listening.close()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
