"""
PROXY-protocol listeners (issue 8, finding 6): who may send a PROXY header, how long it may
take, and how connections are counted before and after it.

The unit tests build the listener exactly as production does (``listener_service`` over the
configured ``haproxy:`` endpoint) on a ``MemoryReactorClock``, take the outermost protocol
factory the endpoint handed to ``listenTCP`` and connect ``StringTransport``s to it, so the
PROXY wrapper, the TLS layering and the SMTP session are the real ones and time is the test's.
The integration tests do the same over real loopback sockets.
"""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.listener import listener_service
from tests.smtp_helpers import ScriptedPolicy, make_factory
from tests.test_smtp_integration import IntakeCase, reply_codes

HEADER = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n"
DEFAULT_HEADER_TIMEOUT = 5.0


class Connection:
    """One accepted TCP connection to the listener's outermost factory."""

    def __init__(self, outer_factory, peer: str, port: int) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, port), hostAddress=IPv4Address("TCP", "127.0.0.1", 25))
        self.protocol = outer_factory.buildProtocol(IPv4Address("TCP", peer, port))
        self.refused = self.protocol is None
        if not self.refused:
            self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def output(self) -> bytes:
        return self.transport.value()

    @property
    def closed(self) -> bool:
        return self.refused or bool(self.transport.disconnecting) or bool(getattr(self.transport, "disconnected", False))

    def lose(self) -> None:
        if not self.refused and not getattr(self.transport, "disconnected", False):
            self.transport.disconnected = True
            self.protocol.connectionLost(None)


class ProxyListenerUnitTests(SynchronousTestCase):

    def listen(self, **listener):
        self.clock = MemoryReactorClock()
        listener.setdefault("endpoint", "haproxy:tcp:2525:interface=127.0.0.1")
        listener.setdefault("proxy_protocol", True)
        self.policy = ScriptedPolicy()
        self.factory = make_factory(policies=(self.policy,), clock=self.clock, add_message_id=False, **listener)
        service = listener_service(self.clock, self.factory.listener, self.factory)
        service.startService()
        self.addCleanup(service.stopService)
        [(_, outer, _, _)] = self.clock.tcpServers
        self.outer = outer
        self.connections: list[Connection] = []
        self.addCleanup(self._lose_all)
        return outer

    def _lose_all(self) -> None:
        for c in self.connections:
            c.lose()

    def connect(self, peer: str = "127.0.0.1", port: int = 50000) -> Connection:
        c = Connection(self.outer, peer, port + len(self.connections))
        self.connections.append(c)
        return c

    def test_untrusted_peer_refused_at_connect(self):
        """Only proxy_trusted_networks (default: loopback) may talk PROXY to the listener."""
        self.listen()
        c = self.connect(peer="192.0.2.50")
        self.assertTrue(c.closed, "a connection from outside proxy_trusted_networks was kept")
        self.assertNotIn(b"220", c.output)
        self.assertEqual(self.factory.sessions, set())

    def test_untrusted_peer_cannot_claim_an_address(self):
        self.listen()
        c = self.connect(peer="192.0.2.50")
        if not c.refused:
            c.send(HEADER + b"EHLO client.test\r\n")
        self.assertNotIn(b"250", c.output)
        self.assertEqual(self.policy.calls, [])

    def test_configured_trusted_network(self):
        self.listen(proxy_trusted_networks=(ipaddress.ip_network("10.1.0.0/16"),))
        self.assertTrue(self.connect(peer="127.0.0.1").closed)
        c = self.connect(peer="10.1.2.3")
        c.send(HEADER + b"EHLO client.test\r\n")
        self.assertIn(b"220 gw.test ESMTP\r\n", c.output)
        [(step, view, _)] = self.policy.calls
        self.assertEqual((step, view.client_address), ("on_connect", "203.0.113.9"))

    def test_silent_header_dropped_after_header_deadline(self):
        """A trusted peer that sends nothing holds its slot for the header deadline, not the idle timeout."""
        self.listen()
        c = self.connect()
        self.clock.advance(DEFAULT_HEADER_TIMEOUT - 0.1)
        self.assertFalse(c.closed)
        self.clock.advance(0.2)
        self.assertTrue(c.closed, "silent PROXY connection still open after the header deadline")

    def test_half_written_header_dropped_after_header_deadline(self):
        self.listen()
        c = self.connect()
        c.send(b"PROXY TCP4 203.0.113.9 127.0")
        self.clock.advance(DEFAULT_HEADER_TIMEOUT + 0.1)
        self.assertTrue(c.closed, "half-written PROXY header kept the connection open")

    def test_header_deadline_is_configurable_and_ends_with_the_header(self):
        self.listen(proxy_header_timeout=2.0)
        late, prompt = self.connect(), self.connect()
        prompt.send(HEADER)
        self.clock.advance(2.1)
        self.assertTrue(late.closed)
        self.assertFalse(prompt.closed, "the header deadline still ran after the header arrived")
        # The idle timeout applies from now on.
        self.assertIn(b"220 gw.test ESMTP\r\n", prompt.output)

    def test_no_greeting_before_the_header(self):
        """The client behind the proxy is unknown until the header: nothing is said to it before."""
        self.listen()
        c = self.connect()
        self.assertEqual(c.output, b"")
        c.send(HEADER)
        self.assertEqual(c.output, b"220 gw.test ESMTP\r\n")

    def test_silent_connections_counted_per_peer_at_connect(self):
        """Silent PROXY connections from one peer cannot take every max_connections slot."""
        self.listen(limits={"max_connections": 10, "max_connections_per_ip": 3})
        silent = [self.connect() for _ in range(3)]
        fourth = self.connect()
        self.assertTrue(fourth.closed, "a fourth silent connection from the same peer was kept")
        self.assertTrue(all(not c.closed for c in silent))
        self.assertIn(b"421 4.7.0", fourth.output)

    def test_counted_per_real_client_after_header_without_speaking(self):
        self.listen(limits={"max_connections_per_ip": 1})
        first, second = self.connect(), self.connect()
        first.send(HEADER)
        second.send(HEADER)
        self.assertEqual(first.output, b"220 gw.test ESMTP\r\n")
        # Refused as soon as its header names the same client, not once it speaks.
        self.assertTrue(second.output.startswith(b"421 4.7.0"), second.output)
        self.assertTrue(second.closed)

    def test_header_moves_the_count_from_peer_to_client(self):
        self.listen(limits={"max_connections_per_ip": 1})
        first = self.connect()
        first.send(HEADER)
        # The load balancer's own count is free again: another client can come through it.
        second = self.connect()
        self.assertFalse(second.closed)
        second.send(b"PROXY TCP4 198.51.100.7 127.0.0.1 40001 25\r\n")
        self.assertEqual(second.output, b"220 gw.test ESMTP\r\n")
        self.assertEqual(self.factory.connections_from("203.0.113.9"), 1)
        self.assertEqual(self.factory.connections_from("198.51.100.7"), 1)
        self.assertEqual(self.factory.connections_from("127.0.0.1"), 0)
        first.lose()
        second.lose()
        self.assertEqual(self.factory.connections_from("203.0.113.9"), 0)
        self.assertEqual(self.factory.connections_from("198.51.100.7"), 0)

    def test_plain_listener_unchanged(self):
        """Without PROXY the peer is the client: greeted at connect, counted at connect."""
        self.listen(endpoint="tcp:2525:interface=127.0.0.1", proxy_protocol=False, limits={"max_connections_per_ip": 1})
        first = self.connect(peer="192.0.2.50")
        self.assertEqual(first.output, b"220 gw.test ESMTP\r\n")
        second = self.connect(peer="192.0.2.50")
        self.assertTrue(second.output.startswith(b"421 4.7.0"))


def _hold_silent(port: int, count: int) -> list:
    """
    Open ``count`` connections at once and say nothing on any; for each, what the server sent
    before it closed the connection on us (b"" when it said nothing).
    """
    socks = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(count)]
    results = []
    try:
        for sock in socks:
            received = b""
            try:
                while True:
                    chunk = sock.recv(1024)
                    if not chunk:
                        break
                    received += chunk
            except ConnectionResetError:
                pass
            results.append(received)
    finally:
        for sock in socks:
            sock.close()
    return results


def _greeting_after_header(port: int) -> bytes:
    """Send a PROXY header and QUIT; everything the server said before closing (reset or EOF)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    received = b""
    try:
        sock.sendall(HEADER + b"QUIT\r\n")
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return received
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        return received
    finally:
        sock.close()


class ProxyListenerLoopbackTests(IntakeCase):
    timeout = 30

    @inlineCallbacks
    def test_silent_header_releases_slots_on_real_socket(self):
        """Two silent connections fill max_connections; the header deadline frees them for a real client."""
        factory, port = yield self.start(
            endpoint="haproxy:tcp:0:interface=127.0.0.1", proxy_protocol=True, proxy_header_timeout=0.3,
            limits={"max_connections": 2, "max_connections_per_ip": 5},
        )
        said = yield deferToThread(_hold_silent, port, 2)
        self.assertEqual(said, [b"", b""])
        yield factory.all_closed()
        received = yield deferToThread(_greeting_after_header, port)
        self.assertEqual(reply_codes(received), [b"220", b"221"])

    @inlineCallbacks
    def test_untrusted_peer_closed_on_real_socket(self):
        factory, port = yield self.start(
            endpoint="haproxy:tcp:0:interface=127.0.0.1", proxy_protocol=True,
            proxy_trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),),
        )
        received = yield deferToThread(_greeting_after_header, port)
        self.assertEqual(received, b"")
        self.assertEqual(factory.opened, 0)


# Twisted's PROXY v1 parser does not check the addresses it is given, so a PROXY
# header could make the "client address" any text without spaces — a bare LF included — which
# went into the Received header (header injection, and a bare LF in a message the gateway
# promises never to pass on), the spool's provenance and the logs.
SESSION = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"


class ProxyAddressTests(SynchronousTestCase):

    def connect(self, header: bytes):
        factory = make_factory(proxy_protocol=True, add_message_id=False)
        wrapper = HAProxyWrappingFactory(factory).buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1))
        wrapper.makeConnection(transport)
        self.addCleanup(lambda: wrapper.connectionLost(None) if not transport.disconnected else None)
        wrapper.dataReceived(header + SESSION)
        return factory, transport.value().split(b"\r\n")

    def test_garbage_source_address_refused(self):
        for source in (b"1.2.3.4\nX-Injected:yes", b"fe80::1%\nX-Injected:yes", b"not-an-address"):
            proto = b"TCP6" if b":" in source else b"TCP4"
            factory, replies = self.connect(b"PROXY " + proto + b" " + source + b" 5.6.7.8 1 2\r\n")
            self.assertEqual(factory.spool.messages, [], source)
            # The greeting waits for the header, so the refusal is the first thing said.
            self.assertEqual(replies[0][:9], b"421 4.7.0", source)

    def test_real_source_address_used(self):
        factory, replies = self.connect(b"PROXY TCP4 198.51.100.7 5.6.7.8 1 2\r\n")
        [(entry, data)] = factory.spool.messages
        self.assertEqual(entry.provenance.client_address, "198.51.100.7")
        self.assertIn(b"([198.51.100.7])", data)
