"""
A client that never reads its replies (issue 8, finding 7) must not make the gateway buffer
them: the session is the transport's streaming producer, stops reading and answering while
the transport's write buffer is full, and a client that still does not read is dropped.
"""

from __future__ import annotations

import socket

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp import flow as flow_module
from tests.smtp_helpers import DeferredPolicy, Session, make_factory
from tests.test_smtp_integration import IntakeCase

# Each round: a multi-line EHLO reply, 250, 250 — about three times the input, and no limit
# (junk commands, errors, messages) ends the session on its own.
ROUND = b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRSET\r\n"
CHUNK = ROUND * (64 * 1024 // len(ROUND))
MAX_CHUNKS = 128  # 8 MiB of pipelined commands at most


class WriteBufferUnitTests(SynchronousTestCase):

    def session(self, **kw) -> Session:
        self.clock = Clock()
        factory = make_factory(clock=self.clock, **kw)
        s = Session(factory)
        self.addCleanup(s.close)
        return s

    def test_session_is_the_transports_streaming_producer(self):
        s = self.session()
        self.assertIs(s.transport.producer, s.proto)
        self.assertTrue(s.transport.streaming)

    def test_no_reading_or_answering_while_the_write_buffer_is_full(self):
        s = self.session()
        s.ehlo()
        # The transport's buffer went over its bound: it pauses its producer.
        s.proto.pauseProducing()
        self.assertEqual(s.send(b"NOOP\r\nNOOP\r\nNOOP\r\n"), [])
        # A little input is still read (a TLS handshake needs it); past 64 KiB reading stops.
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.send(b"RSET\r\n" * 12000), [])
        self.assertEqual(s.transport.producerState, "paused", "reading was not paused")
        # Drained: the buffered commands are answered, in order, and reading resumes.
        s.proto.resumeProducing()
        self.assertEqual(s.lines()[:4], [b"250 2.0.0 Ok"] * 4)
        self.assertEqual(s.transport.producerState, "producing")

    def test_other_pause_reasons_survive_a_drain(self):
        policy = DeferredPolicy(steps=("on_mail_from",))
        s = self.session(policies=(policy,))
        s.ehlo()
        s.proto.pauseProducing()
        s.proto.resumeProducing()
        s.send(b"MAIL FROM:<a@b.test>\r\n")
        s.send(b"NOOP\r\n" * 20000)
        # Waiting for the policy with a lot of pipelined input: still paused after a drain.
        self.assertEqual(s.transport.producerState, "paused")
        s.proto.pauseProducing()
        s.proto.resumeProducing()
        self.assertEqual(s.transport.producerState, "paused")
        policy.fire_all()

    def test_replies_written_while_paused_are_bounded(self):
        self.patch(flow_module, "MAX_UNREAD_REPLIES", 10)
        policy = DeferredPolicy(steps=("on_mail_from",))
        s = self.session(policies=(policy,))
        s.ehlo()
        s.send(b"MAIL FROM:<a@b.test>\r\n")
        s.proto.pauseProducing()
        policy.fire_all()
        # "250 2.1.0 Sender ok" is more than 10 unread bytes on top of a full buffer.
        self.assertTrue(s.transport.disconnected, "connection kept past the hard bound of unread replies")

    def test_idle_client_that_does_not_read_is_aborted_without_grace(self):
        s = self.session(limits={"idle_timeout": 30})
        s.ehlo()
        s.proto.pauseProducing()
        self.clock.advance(30)
        # Nothing more would ever be read: no 30 s close grace, no reply that cannot be sent.
        self.assertTrue(s.transport.disconnected)

    def test_quit_and_close_release_the_producer(self):
        s = self.session()
        s.cmd("QUIT")
        self.assertIsNone(s.transport.producer)
        s2 = self.session(limits={"idle_timeout": 30})
        self.clock.advance(30)
        self.assertIsNone(s2.transport.producer)
        self.assertTrue(s2.transport.disconnecting)


def _pipeline_without_reading(port: int) -> int:
    """
    Pipeline up to MAX_CHUNKS chunks of commands and never read a reply.  Returns how many
    bytes went out before the server stopped taking them (the connection was dropped) or all
    were sent.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sent = 0
    try:
        for _ in range(MAX_CHUNKS):
            sock.sendall(CHUNK)
            sent += len(CHUNK)
    except OSError:
        pass
    finally:
        sock.close()
    return sent


class WriteBufferLoopbackTests(IntakeCase):
    timeout = 60

    @inlineCallbacks
    def test_client_that_never_reads_does_not_grow_the_write_buffer(self):
        factory, port = yield self.start(limits={"idle_timeout": 1})
        peak = {"buffered": 0}
        build = factory.buildProtocol

        def build_and_watch(addr):
            proto = build(addr)
            send_line = proto.sendLine

            def watched(line):
                result = send_line(line)
                t = proto.transport
                buffered = len(t.dataBuffer) - t.offset + t._tempDataLen
                peak["buffered"] = max(peak["buffered"], buffered)
                return result
            proto.sendLine = watched
            return proto

        factory.buildProtocol = build_and_watch
        sent = yield deferToThread(_pipeline_without_reading, port)
        yield factory.all_closed()
        self.assertLess(peak["buffered"], 256 * 1024, f"server buffered {peak['buffered']} bytes of unread replies")
        # The server stopped reading, then dropped the client: not everything could be sent.
        self.assertLess(sent, MAX_CHUNKS * len(CHUNK))
