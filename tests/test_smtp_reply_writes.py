"""
How replies reach the transport (issue 13): the replies of one turn (a pipelined batch, a
multi-line EHLO, an answer that came in and the commands it released) go out in one write,
in order, and on a plain TCP connection with nothing buffered they go straight to the socket
instead of waiting a reactor turn.  The bytes themselves are pinned by the protocol tests.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.smtp.flow import write_now
from tests.smtp_helpers import DeferredPolicy, Session, StaticTLS, TLSStringTransport, make_factory


class CountingTransport(StringTransport):
    """A StringTransport that records each write call and when the connection was closed."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
        self.writes: list[bytes] = []
        self.closed_after: Any = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.closed_after = len(self.writes)
        super().loseConnection()


class CountingTLSTransport(CountingTransport, TLSStringTransport):
    started_after: Any = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.started_after = len(self.writes)
        super().startTLS(contextFactory, normal)


class ReplyBatchTests(SynchronousTestCase):

    def session(self, transport: Any = None, **kw: Any) -> Session:
        s = Session(make_factory(clock=Clock(), **kw), transport=transport or CountingTransport())
        self.addCleanup(s.close)
        return s

    def test_pipelined_replies_arrive_in_one_write(self):
        s = self.session()
        s.ehlo()
        before = len(s.transport.writes)
        lines = s.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\nNOOP\r\n")
        self.assertEqual(lines, [b"250 2.1.0 Sender ok", b"250 2.1.5 Recipient ok",
                                 b"250 2.1.5 Recipient ok", b"250 2.0.0 Ok"])
        self.assertEqual(len(s.transport.writes) - before, 1, s.transport.writes[before:])

    def test_multiline_ehlo_reply_is_one_write(self):
        s = self.session()
        before = len(s.transport.writes)
        lines = s.ehlo()
        self.assertGreater(len(lines), 1)
        self.assertEqual(len(s.transport.writes) - before, 1)

    def test_the_greeting_goes_out_at_once(self):
        s = self.session()
        self.assertEqual(s.transport.writes, [b"220 " + s.proto.hostname.encode() + b" ESMTP\r\n"])

    def test_an_answer_and_the_commands_it_released_share_one_write(self):
        policy = DeferredPolicy(steps=("on_mail_from",))
        s = self.session(policies=(policy,))
        s.ehlo()
        self.assertEqual(s.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nNOOP\r\n"), [])
        before = len(s.transport.writes)
        policy.fire_all()
        self.assertEqual(s.lines(), [b"250 2.1.0 Sender ok", b"250 2.1.5 Recipient ok", b"250 2.0.0 Ok"])
        self.assertEqual(len(s.transport.writes) - before, 1, s.transport.writes[before:])

    def test_last_reply_is_written_before_the_close(self):
        s = self.session()
        s.ehlo()
        lines = s.send(b"NOOP\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(lines[0], b"250 2.0.0 Ok")
        self.assertTrue(lines[1].startswith(b"221 2.0.0 "))
        self.assertEqual(len(lines), 2, "nothing is answered after QUIT")
        self.assertEqual(s.transport.closed_after, len(s.transport.writes), "a reply was written after the close")

    def test_starttls_ready_is_written_before_tls_starts(self):
        s = Session(make_factory(clock=Clock(), tls_source=StaticTLS(object()), tls="starttls", tls_cert="x"),
                    transport=CountingTLSTransport())
        self.addCleanup(s.close)
        s.ehlo()
        self.assertEqual(s.send(b"STARTTLS\r\n"), [b"220 2.0.0 Ready to start TLS"])
        self.assertIsNotNone(s.transport.tls_options)
        self.assertEqual(s.transport.started_after, len(s.transport.writes),
                         "the 220 must be written in plaintext before the TLS layer starts")


class _Capture(Protocol):
    def __init__(self, made: Deferred) -> None:
        self.made = made

    def connectionMade(self) -> None:
        self.made.callback(self)


class WriteNowTests(TestCase):
    """L{write_now} on a real loopback TCP connection."""

    @inlineCallbacks
    def test_bytes_go_to_the_socket_without_a_reactor_turn(self):
        made: Deferred = Deferred()
        factory = Factory.forProtocol(lambda: _Capture(made))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        self.addCleanup(client.close)
        server = yield made
        self.addCleanup(server.transport.abortConnection)
        write_now(server.transport, b"250 2.0.0 Ok\r\n")
        # Nothing was left for the reactor to write later: the kernel has it already.
        self.assertEqual(server.transport.dataBuffer, b"")
        self.assertEqual(server.transport._tempDataBuffer, [])
        received = yield deferToThread(client.recv, 100)
        self.assertEqual(received, b"250 2.0.0 Ok\r\n")

    @inlineCallbacks
    def test_bytes_wait_behind_what_is_buffered(self):
        made: Deferred = Deferred()
        factory = Factory.forProtocol(lambda: _Capture(made))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        self.addCleanup(client.close)
        server = yield made
        self.addCleanup(server.transport.abortConnection)
        server.transport.write(b"first\r\n")  # buffered until the reactor's next turn
        write_now(server.transport, b"second\r\n")
        self.assertEqual(b"".join(server.transport._tempDataBuffer), b"first\r\nsecond\r\n",
                         "a direct send would have overtaken the buffered bytes")

        def read_both() -> bytes:
            data = b""
            while len(data) < 15:
                chunk = client.recv(100)
                if not chunk:
                    break
                data += chunk
            return data

        self.assertEqual((yield deferToThread(read_both)), b"first\r\nsecond\r\n")
