"""
Stopping the real single-process daemon (``twistd -n graphsmtp``, SIGTERM) while clients are
connected: the reply the gateway decided for a message finished during the stop (250, it is in
the spool) and then the 421 reach the client before the process exits; a client that never reads
does not hold the exit up.

The reactor's shutdown drops what connections still buffer.  Before the stop waited for the
closed sessions (L{gateway.smtp.closing}), an idle client got EOF instead of 421, and a message
for a mailbox Graph had paused was queued but its 250 never sent (the client would send it
again); the stop only flushed by chance when a delivery in flight or the Graph connection pool
made it wait.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import textwrap

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.smtp.closing import SESSION_FLUSH_LIMIT
from gateway.testing.certs import TestCA
from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import send_message
from tests.daemon_helpers import spawn_gateway, write_private

MESSAGE = b"From: app@corp.example\r\nTo: bob@corp.example\r\nSubject: stopping\r\n\r\nbody\r\n"


def config_text(directory: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        [gateway]
        state_dir = "{directory}/state"
        hostname = "shutdown.test"
        [queue]
        retry_schedule = ["1h"]
        jitter = 0.0
        shutdown_grace = "20s"
        [[listener]]
        name = "mx"
        endpoint = "tcp:0:interface=127.0.0.1"
        trusted_networks = ["127.0.0.0/8"]
        """) + extra


def read_reply(sock: socket.socket, pending: bytearray) -> bytes:
    """One complete (possibly multi-line) SMTP reply, or what came before end of file."""
    while True:
        lines = bytes(pending).split(b"\r\n")
        for index, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                reply = b"\r\n".join(lines[:index + 1]) + b"\r\n"
                del pending[:len(reply)]
                return reply
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            reply = bytes(pending)
            pending.clear()
            return reply
        pending += chunk


class SingleProcessStopTests(TestCase):
    timeout = 120

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    @inlineCallbacks
    def start(self, extra: str = ""):
        path = os.path.join(self.directory, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(config_text(self.directory, extra))
        self.daemon = spawn_gateway(self, path)
        self.port = yield self.daemon.listening_port("mx")

    def open_transaction(self):
        """A client with a message half sent in DATA (in a thread: blocking socket calls)."""
        sock = socket.create_connection(("127.0.0.1", self.port), 60)
        self.addCleanup(sock.close)
        pending = bytearray()
        greeting = read_reply(sock, pending)
        assert greeting.startswith(b"220"), greeting
        for command in (b"EHLO client.test", b"MAIL FROM:<app@corp.example>", b"RCPT TO:<bob@corp.example>", b"DATA"):
            sock.sendall(command + b"\r\n")
            reply = read_reply(sock, pending)
        assert reply.startswith(b"354"), reply
        sock.sendall(MESSAGE)
        return sock, pending

    @inlineCallbacks
    def test_a_message_finished_during_sigterm_gets_its_250_then_421(self):
        yield self.start()
        sock, pending = yield deferToThread(self.open_transaction)
        mark = len(self.daemon.output)
        self.daemon.signal(signal.SIGTERM)
        # The listener is closed: the stop is under way and waits for the transaction in DATA.
        yield self.daemon.wait_for(rb"\(TCP Port \d+ Closed\)", mark)

        def finish():
            sock.sendall(b".\r\n")
            return read_reply(sock, pending), read_reply(sock, pending)

        final, goodbye = yield deferToThread(finish)
        yield self.daemon.ended
        self.assertTrue(final.startswith(b"250 2.0.0"), (final, goodbye, self.daemon.output))
        self.assertTrue(goodbye.startswith(b"421 4.3.2"), (final, goodbye))
        self.assertIn(b"Server Shut Down.", self.daemon.output)
        # 250 means fsynced: the message waits in the spool for the next start.
        queue_id = re.search(rb"queued as (\S+)", final).group(1).decode()
        state = os.path.join(self.directory, "state")
        kept = os.listdir(os.path.join(state, "spool", "queue")) + os.listdir(os.path.join(state, "outbox", "new"))
        self.assertTrue([name for name in kept if queue_id in name], kept)

    @inlineCallbacks
    def test_a_message_finished_during_sigterm_for_a_throttled_mailbox_gets_its_250(self):
        """
        Graph paused the sending mailbox (429, Retry-After an hour) and its connection is gone:
        the message accepted during the stop is not delivered at once, so nothing else in the
        stop keeps the reactor turning after its session is closed.
        """
        fake = yield start_fake_graph(reactor, os.path.join(self.directory, "fake"))
        self.addCleanup(fake.stop)
        secret = write_private(os.path.join(self.directory, "client-secret"), fake.client_secret)
        fake.inject(Fault.throttled(retry_after="3600"), mailbox="app@corp.example", operation="sendMail")
        yield self.start(textwrap.dedent(f"""\
            [graph]
            tenant_id = "{fake.tenant_id}"
            client_id = "{fake.client_id}"
            client_secret_file = "{secret}"
            authority = "{fake.authority}"
            graph_url = "{fake.graph_url}"
            ca_bundle = "{fake.ca_path}"
            """))
        code, text = yield send_message(self.port, "app@corp.example", ["bob@corp.example"], MESSAGE, timeout=60)
        self.assertEqual(code, 250, text)
        yield self.daemon.wait_for(rb"deferred \S+ attempt 1 retry in")
        # Graph has closed the kept-alive connection since: stopping the Graph connection pool
        # has nothing to wait for either.  (The gateway sees the reset before it reads the
        # commands below, which come later on its one event loop.)
        yield fake.stop()
        sock, pending = yield deferToThread(self.open_transaction)
        mark = len(self.daemon.output)
        self.daemon.signal(signal.SIGTERM)
        yield self.daemon.wait_for(rb"\(TCP Port \d+ Closed\)", mark)

        def finish():
            sock.sendall(b".\r\n")
            return read_reply(sock, pending), read_reply(sock, pending)

        final, goodbye = yield deferToThread(finish)
        yield self.daemon.ended
        self.assertTrue(final.startswith(b"250 2.0.0"), (final, goodbye, self.daemon.output))
        self.assertTrue(goodbye.startswith(b"421 4.3.2"), (final, goodbye))
        queue_id = re.search(rb"queued as (\S+)", final).group(1).decode()
        queue = os.path.join(self.directory, "state", "spool", "queue")
        self.assertTrue([name for name in os.listdir(queue) if queue_id in name], os.listdir(queue))
        self.assertEqual(fake.sent_by("app@corp.example"), [])

    @inlineCallbacks
    def test_an_idle_session_gets_421_before_the_daemon_exits(self):
        yield self.start()

        def greeted():
            sock = socket.create_connection(("127.0.0.1", self.port), 60)
            self.addCleanup(sock.close)
            pending = bytearray()
            read_reply(sock, pending)
            sock.sendall(b"EHLO client.test\r\n")
            assert read_reply(sock, pending).startswith(b"250"), pending
            return sock, pending

        sock, pending = yield deferToThread(greeted)
        self.daemon.signal(signal.SIGTERM)
        goodbye = yield deferToThread(read_reply, sock, pending)
        yield self.daemon.ended
        self.assertTrue(goodbye.startswith(b"421 4.3.2"), (goodbye, self.daemon.output))

    @inlineCallbacks
    def test_a_tls_client_that_never_reads_does_not_hold_the_exit_up(self):
        """
        Its 421 and close_notify are written, but a TLS close waits for the peer's close_notify,
        which a client that reads nothing never sends: the stop gives up after the bound.
        """
        ca = TestCA.create(os.path.join(self.directory, "ca"))
        issued = ca.issue()
        yield self.start(textwrap.dedent(f"""\
            [[listener]]
            name = "smtps"
            endpoint = "tcp:0:interface=127.0.0.1"
            tls = "implicit"
            tls_cert = "{issued.cert_path}"
            tls_key = "{issued.key_path}"
            trusted_networks = ["127.0.0.0/8"]
            """))
        port = yield self.daemon.listening_port("smtps")

        def greeted_then_deaf():
            context = ssl.create_default_context(cafile=ca.ca_cert_path)
            tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), 60), server_hostname="localhost")
            self.addCleanup(tls.close)
            pending = bytearray()
            assert read_reply(tls, pending).startswith(b"220"), pending
            tls.sendall(b"EHLO client.test\r\n")
            assert read_reply(tls, pending).startswith(b"250"), pending
            return tls  # from here on nothing is read, and the connection stays open

        yield deferToThread(greeted_then_deaf)
        mark = len(self.daemon.output)
        self.daemon.signal(signal.SIGTERM)
        yield self.daemon.wait_for(rb"1 SMTP session\(s\) still closing after " + str(SESSION_FLUSH_LIMIT).encode()
                                   + rb"s \(clients not reading\); dropped", mark)
        yield self.daemon.ended
        self.assertIn(b"Server Shut Down.", self.daemon.output[mark:])
