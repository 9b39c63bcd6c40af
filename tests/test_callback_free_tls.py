"""
The callback-free HTTPS policy (what Graph deliveries use, so they work under MDWE) verifies as
strictly as Twisted's own: trusted chain and matching host name, or no connection.
"""

from __future__ import annotations

import os

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from gateway.callback_free_tls import CallbackFreeContext, HostnameVerifyingPolicy
from gateway.delivery.graph.factory import tls_policy
from gateway.testing.certs import TestCA


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    def __init__(self) -> None:
        self.result: Deferred = Deferred()
        self.closed: Deferred = Deferred()

    def handshakeCompleted(self) -> None:
        self.transport.loseConnection()
        if not self.result.called:
            self.result.callback("verified")

    def connectionLost(self, reason) -> None:
        if not self.result.called:
            self.result.callback(reason.value)
        self.closed.callback(None)


class _ServerSide(Protocol):
    def __init__(self, opened: list) -> None:
        self.closed: Deferred = Deferred()
        opened.append(self)

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


class HostnameVerifyingPolicyTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        self.ca = TestCA.create(os.path.join(directory, "ca"))
        self.other_ca = TestCA.create(os.path.join(directory, "other"))
        issued = self.ca.issue(names=("localhost", "127.0.0.1"))
        with open(issued.cert_path, "rb") as c, open(issued.key_path, "rb") as k:
            options = ssl.PrivateCertificate.loadPEM(k.read() + c.read()).options()
        self.server_protocols: list = []
        factory = Factory.forProtocol(lambda: _ServerSide(self.server_protocols))
        self.port = yield SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(factory)
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def handshake(self, policy, name):
        endpoint = wrapClientTLS(policy.creatorForNetloc(name.encode(), 443),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port))
        proto = _Handshake()
        yield endpoint.connect(Factory.forProtocol(lambda: proto))
        result = yield proto.result
        proto.transport.abortConnection()
        # Wait for both ends to close so no socket outlives the test.
        yield proto.closed
        for server_side in self.server_protocols:
            yield server_side.closed
        return result

    @inlineCallbacks
    def test_trusted_chain_and_matching_names_connect(self):
        policy = tls_policy(self.ca.ca_cert_path)
        self.assertIsInstance(policy, HostnameVerifyingPolicy)
        self.assertEqual((yield self.handshake(policy, "localhost")), "verified")
        self.assertEqual((yield self.handshake(policy, "127.0.0.1")), "verified")

    @inlineCallbacks
    def test_wrong_host_name_is_refused(self):
        result = yield self.handshake(tls_policy(self.ca.ca_cert_path), "graph.microsoft.com")
        self.assertNotEqual(result, "verified")
        self.assertIn("certificate verify failed", str(result))

    @inlineCallbacks
    def test_wrong_ip_address_is_refused(self):
        result = yield self.handshake(tls_policy(self.ca.ca_cert_path), "127.0.0.2")
        self.assertNotEqual(result, "verified")

    @inlineCallbacks
    def test_untrusted_chain_is_refused(self):
        result = yield self.handshake(tls_policy(self.other_ca.ca_cert_path), "localhost")
        self.assertNotEqual(result, "verified")
        self.assertIn("certificate verify failed", str(result))


class CallbackFreeContextTests(SynchronousTestCase):
    def test_no_alpn_selection_callback_is_installed(self):
        ctx = CallbackFreeContext(ssl.SSL.TLS_METHOD)
        ctx.set_alpn_select_callback(lambda conn, protos: b"")
        self.assertIsNone(getattr(ctx, "_alpn_select_helper", None))
