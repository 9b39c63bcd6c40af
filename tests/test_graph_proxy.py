"""Graph and Entra reached through an HTTP proxy's CONNECT tunnels (TLS end to end)."""

from __future__ import annotations

from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config.errors import ConfigError
from gateway.config.graph import parse_graph_section
from gateway.config.reader import TableReader
from gateway.delivery.graph.proxy import parse_proxy_url
from gateway.delivery.interfaces import Delivered, Transient
from tests.graph_helpers import simple_message, start_rig


class _Relay(Protocol):
    def __init__(self, peer):
        self.peer = peer

    def dataReceived(self, data):
        self.peer.transport.write(data)

    def connectionLost(self, reason):
        if self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _ConnectProxy(Protocol):
    """A minimal CONNECT proxy: records targets, relays bytes, never sees plaintext HTTP."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.buffer = b""
        self.upstream = None

    def connectionMade(self):
        self.proxy.open.add(self)

    def dataReceived(self, data):
        if self.upstream is not None:
            self.upstream.transport.write(data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        request_line = self.buffer.split(b"\r\n", 1)[0].decode()
        self.proxy.requests.append(request_line)
        method, target, _ = request_line.split(" ")
        if method != "CONNECT" or self.proxy.refuse:
            self.transport.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            self.transport.loseConnection()
            return
        host, port = target.rsplit(":", 1)
        d = endpoints.TCP4ClientEndpoint(reactor, host, int(port)).connect(Factory.forProtocol(lambda: _Relay(self)))

        def up(relay):
            self.upstream = relay
            self.proxy.open.add(relay)
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        d.addCallbacks(up, lambda f: self.transport.loseConnection())

    def connectionLost(self, reason):
        self.proxy.open.discard(self)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()


class ProxyConfigTests(SynchronousTestCase):
    def test_proxy_url_checked(self):
        self.assertEqual(parse_proxy_url("http://proxy.corp:8080"), ("proxy.corp", 8080))
        table = {"tenant_id": "t", "client_id": "c", "client_secret": "s", "https_proxy": "socks5://x:1"}
        self.assertRaises(ConfigError, parse_graph_section, TableReader(table, "graph"), {}, lambda p: p)


class ProxyTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.requests = []
        self.refuse = False
        self.open = set()
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _ConnectProxy(self)))
        self.addCleanup(self.close_all)
        self.addCleanup(port.stopListening)
        self.proxy_url = f"http://127.0.0.1:{port.getHost().port}"

    def close_all(self):
        for p in list(self.open):
            if p.transport is not None:
                p.transport.abortConnection()

    @inlineCallbacks
    def test_graph_and_entra_through_the_tunnel(self):
        r = yield start_rig(self, reactor, https_proxy=self.proxy_url)
        outcome = yield r.deliverer.deliver(r.entry(simple_message(to=["bob@fabrikam.test"]), "alice@contoso.test", ["bob@fabrikam.test"]))
        self.assertIsInstance(outcome, Delivered)
        target = r.server.graph_url.split("//", 1)[1]
        self.assertEqual({line.split(" ")[:2][1] for line in self.requests}, {target})  # only CONNECTs to Graph/Entra
        self.assertGreaterEqual(len(self.requests), 2)  # one for MSAL (requests), one for treq
        self.assertEqual(len(r.server.sent), 1)

    @inlineCallbacks
    def test_refusing_proxy_is_transient(self):
        r = yield start_rig(self, reactor, https_proxy=self.proxy_url)
        token = yield r.deliverer.tokens.acquire(r.deliverer.resolver.default)
        self.assertTrue(token.reveal())
        self.refuse = True
        outcome = yield r.deliverer.deliver(r.entry(simple_message(to=["bob@fabrikam.test"]), "alice@contoso.test", ["bob@fabrikam.test"]))
        self.assertIsInstance(outcome, Transient)
        self.assertIn("proxy refused the tunnel: HTTP/1.1 407", outcome.reason)
        self.assertFalse(outcome.possibly_delivered)
