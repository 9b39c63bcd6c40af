"""
Review finding: Twisted's PROXY v1 parser does not check the addresses it is given, so a PROXY
header could make the "client address" any text without spaces — a bare LF included — which
went into the Received header (header injection, and a bare LF in a message the gateway
promises never to pass on), the spool's provenance and the logs.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from tests.test_smtp_support import make_factory

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
