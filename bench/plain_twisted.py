#!/usr/bin/env python
"""
The floor for ``compare_postfix.py --plain-twisted``: Twisted's own ESMTP server with the
least a durable intake needs, and nothing else.

It answers one question the side-by-side table raises: how close can a Twisted server come to
Postfix on this machine at all?  So it does only what durable acceptance must: every message
is written into one new file, flushed (``fdatasync``), renamed into ``held/`` and the
directory fsynced, in the reactor's thread pool, before the 250.  No policy, no record, no
logging per message, no limits, no group commit.  The gap between this server and graphsmtp
is what graphsmtp's features cost.  The gap between this server and Postfix is what Twisted's
stock ESMTP server costs in one Python process; ``--lean`` (below) tells its line-by-line work
apart from Twisted's reactor and the durable write.

    python bench/plain_twisted.py --port 2525 --spool /var/tmp/plain
    python bench/plain_twisted.py --port 2525 --spool /var/tmp/plain --processes 2

``--processes N`` starts N-1 more processes listening on the same port (``SO_REUSEPORT``), each
with its own reactor: what a Twisted server gets out of the machine's cores.

``--lean`` puts the same durable files behind L{LeanSMTP}, a bare Protocol that takes each read
whole instead of line by line (``compare_postfix.py --lean-twisted``): whether the stock
server's per-line work or Twisted itself keeps the floor below Postfix.  ``--lean
--gateway-spool`` puts graphsmtp's own spool behind it instead (L{GatewaySpoolCommit},
``compare_postfix.py --lean-spool``), and ``--checks`` adds graphsmtp's checks of each message
(``bench/checked_floor.py``, ``compare_postfix.py --lean-checks``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
from typing import Any, Callable, Iterator, Optional

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory
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


class LeanSMTP(Protocol):
    """
    The least SMTP smtp-source needs, on a bare Protocol: ``--lean``.

    Twisted's own server hands every line, of the commands and of the message, to Python one
    at a time.  This one takes what arrives in one read as one piece: commands split once, the
    message searched for its end with one ``find`` per read, the dots undone with one
    ``replace``.  It answers whether the stock server's per-line work, not Twisted's reactor,
    is what keeps the floor below Postfix.  It checks nothing: a benchmark peer only.
    """

    def __init__(self, commit: Callable[[bytes], Deferred]) -> None:
        self._commit = commit
        self._pending = bytearray()
        self._message: Optional[bytearray] = None
        self._searched = 0
        self._committing = False
        self._quit = False

    def connectionMade(self) -> None:
        self.transport.write(b"220 lean ESMTP\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self._message is not None:
            self._message += data
        else:
            self._pending += data
        self._advance()

    def _advance(self) -> None:
        while not self._committing and not self._quit:
            if self._message is not None:
                if not self._end_of_message():
                    return
                continue
            end = self._pending.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self._pending[:end])
            del self._pending[:end + 2]
            self._command(line[:4].upper(), line)

    def _command(self, verb: bytes, line: bytes) -> None:
        if verb == b"EHLO":
            self.transport.write(b"250-lean\r\n250 PIPELINING\r\n")
        elif verb == b"DATA":
            self.transport.write(b"354 go ahead\r\n")
            # A leading CRLF lets one search find the end of an empty message too.
            self._message = bytearray(b"\r\n" + self._pending)
            self._pending = bytearray()
            self._searched = 0
        elif verb == b"QUIT":
            self._quit = True  # nothing after QUIT is read, let alone stored
            self.transport.write(b"221 bye\r\n")
            self.transport.loseConnection()
        else:
            self.transport.write(b"250 ok\r\n")

    def _end_of_message(self) -> bool:
        message = self._message
        assert message is not None
        end = message.find(b"\r\n.\r\n", self._searched)
        if end < 0:
            self._searched = max(0, len(message) - 4)
            return False
        self._pending = message[end + 5:]
        self._message = None
        self._committing = True
        body = bytes(message[:end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
        self._commit(body).addCallbacks(self._committed, self._not_committed)
        return True

    def _committed(self, _: None) -> None:
        self._answered(b"250 2.0.0 queued\r\n")

    def _not_committed(self, _: object) -> None:
        self._answered(b"451 4.3.0 not stored\r\n")

    def _answered(self, reply: bytes) -> None:
        self._committing = False
        self.transport.write(reply)
        self._advance()


class LeanFactory(ServerFactory):
    """``--lean``: L{LeanSMTP} committing with ``commit`` (e.g. L{DurableFiles.commit} in a thread)."""

    def __init__(self, commit: Callable[[bytes], Deferred]) -> None:
        self._commit = commit

    def buildProtocol(self, addr: object) -> LeanSMTP:
        return LeanSMTP(self._commit)


class GatewaySpoolCommit:
    """
    ``--gateway-spool``: commit into graphsmtp's own spool (``held/``, as the benchmark's
    graphsmtp does), with its group commit, record and digest, in ``pool`` (a started
    L{gateway.threads.ThreadPoolService}; L{main} gives it the daemon's default size).  Behind
    L{LeanSMTP} it splits graphsmtp's distance from the lean floor into the spool's part and the
    SMTP session's part.  ``in_commit_child``: the daemon's commits, as ``[spool]`` configures
    them by default (L{gateway.wiring.build_spool}): in the commit child, with its intake
    journal (and, as in the daemon, in the spool's threads when the child cannot take a batch);
    L{commits} is that child's service, for the caller to start and stop.  Without it the
    spool's threads commit every batch.  Not quite the daemon's path: the whole message is
    handed over at its end (the daemon writes large messages as they arrive), and no Received
    header is added.
    """

    def __init__(self, spool_dir: str, pool: Any, in_commit_child: bool = False) -> None:
        from gateway.spool.entry import Envelope, Provenance
        from gateway.spool.store import DirectorySpool

        self.spool = DirectorySpool(spool_dir, pool.pool, reactor, hold_new=True)
        self.spool.disk.ensure_directories()  # the benchmark counts held/ before the first message
        self.commits = self.spool.commit_in_process() if in_commit_child else None
        self._envelope = Envelope("bench@sender.test", ("sink@rcpt.test",))
        self._provenance = Provenance("127.0.0.1", "client.test", "bench", tls=False)

    def __call__(self, body: bytes) -> Deferred:
        def opened(writer: Any) -> Deferred:
            writer.write(body)
            return writer.commit(self._envelope, self._provenance, sending_mailbox="bench@sender.test")
        return self.spool.open_writer().addCallback(opened)


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
    parser.add_argument("--lean", action="store_true", help="a bare Protocol instead of Twisted's ESMTP (LeanSMTP)")
    parser.add_argument("--gateway-spool", action="store_true",
                        help="with --lean: commit into graphsmtp's spool instead (one process: the spool is locked)")
    parser.add_argument("--checks", action="store_true",
                        help="with --lean --gateway-spool: graphsmtp's checks per message too (CheckedSMTP)")
    options = parser.parse_args()
    if options.gateway_spool and (not options.lean or options.processes != 1):
        parser.error("--gateway-spool needs --lean and one process")
    if options.checks and not options.gateway_spool:
        parser.error("--checks needs --lean --gateway-spool")
    listening = listen(options.port)
    for _ in range(options.processes - 1):
        # Started, not forked: this process's reactor already exists, and a fork would share it.
        child = subprocess.Popen([sys.executable, __file__, "--port", str(options.port), "--spool", options.spool]
                                 + (["--lean"] if options.lean else []))
        # The benchmark stops this process; it stops the others.
        reactor.addSystemEventTrigger("before", "shutdown", child.terminate)  # type: ignore[attr-defined]
    if options.gateway_spool:
        from gateway.config.model import SpoolConfig
        from gateway.threads import ThreadPoolService

        pool = ThreadPoolService("graphsmtp-spool", 1, SpoolConfig(options.spool).threads)  # the daemon's default
        pool.startService()
        commit = GatewaySpoolCommit(options.spool, pool, in_commit_child=True)
        assert commit.commits is not None
        commit.commits.startService()
        # The child first (it may hand an undo to the pool as it ends), then the pool.
        reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
            "before", "shutdown", lambda: commit.commits.stopService().addBoth(lambda _: pool.stopService()))
        if options.checks:
            from checked_floor import CheckedFactory, log_like_the_daemon

            log_like_the_daemon()
            factory: ServerFactory = CheckedFactory(commit)
        else:
            factory = LeanFactory(commit)
    elif options.lean:
        files = DurableFiles(options.spool)
        factory = LeanFactory(lambda body: threads.deferToThread(files.commit, body))
    else:
        factory = PlainFactory(DurableFiles(options.spool))
    reactor.adoptStreamPort(listening.fileno(), socket.AF_INET, factory)  # type: ignore[attr-defined]
    listening.close()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
