"""
Review: a tenant whose app Graph keeps refusing (401 even with a freshly issued token: missing
Mail.Send consent, wrong tenant) must stay paused with *growing* backoff, and must not be
reported as healthy between attempts just because Entra keeps issuing tokens.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.config.graph import GraphConfig
from gateway.config.secrets import Secret
from gateway.delivery.graph.client import GraphResponse
from gateway.delivery.graph.credentials import (
    ConfigCredentialResolver,
    credentials_from_config,
)
from gateway.delivery.graph.deliverer import GraphDeliverer
from gateway.delivery.graph.token import AccessToken
from gateway.delivery.interfaces import Delivered, Transient
from tests.graph_helpers import make_entry, write_message

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"


class _Client:
    def __init__(self) -> None:
        self.code = 401
        self.calls = 0

    def send_mime(self, graph_url, mailbox, token, mime):
        self.calls += 1
        if self.code == 401:
            return succeed(GraphResponse(401, "InvalidAuthenticationToken", "Access token validation failure."))
        return succeed(GraphResponse(self.code))


class _Tokens:
    def __init__(self) -> None:
        self.issued = 0

    def acquire(self, credentials):
        self.issued += 1
        return succeed(AccessToken(f"token-{self.issued}", 10**9))

    def evict(self, credentials, token=None):
        return succeed(None)


class GraphRefusalBackoffTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.config = GraphConfig("tenant", "client", "https://login.example/tenant", "https://graph.example",
                                  client_secret=Secret("s3cret"), tenant_backoff=60.0, tenant_backoff_max=3600.0)
        self.client = _Client()
        self.deliverer = GraphDeliverer(self.config, self.client, _Tokens(),
                                        ConfigCredentialResolver(credentials_from_config(self.config)), self.clock)
        message = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nhi\r\n".encode("ascii")
        self.path = write_message(self.mktemp(), message)

    def deliver(self):
        return self.successResultOf(self.deliverer.deliver(make_entry(self.path, ALICE, [BOB])))

    def test_backoff_grows_while_graph_keeps_refusing(self):
        first = self.deliver()
        self.assertIsInstance(first, Transient)
        self.assertEqual(first.retry_at, self.clock.seconds() + 60)
        self.clock.advance(61)
        [health] = self.deliverer.health()
        self.assertEqual(health.state, "config-error")
        second = self.deliver()
        self.assertIsInstance(second, Transient)
        self.assertEqual(second.retry_at, self.clock.seconds() + 120)
        [health] = self.deliverer.health()
        self.assertEqual(health.state, "config-error")

    def test_tenant_is_ok_again_once_graph_accepts(self):
        self.deliver()
        self.clock.advance(61)
        self.client.code = 202
        self.assertIsInstance(self.deliver(), Delivered)
        [health] = self.deliverer.health()
        self.assertEqual((health.state, health.paused_until), ("ok", 0.0))
        self.client.code = 401
        self.clock.advance(5)  # past the mailbox's pacing interval
        again = self.deliver()
        self.assertEqual(again.retry_at, self.clock.seconds() + 60)  # backoff starts over


class _PendingTokens:
    """Every acquire waits until the test decides (like MSAL's single flight)."""

    def __init__(self) -> None:
        self.waiting = []

    def acquire(self, credentials):
        from twisted.internet.defer import Deferred
        d = Deferred()
        self.waiting.append(d)
        return d

    def evict(self, credentials, token=None):
        return succeed(None)


class ConcurrentConfigErrorTests(TestCase):
    """One bad-credential event seen by many concurrent deliveries is one step of backoff."""

    def test_concurrent_failures_pause_once(self):
        from gateway.delivery.graph.token import TokenError
        clock = Clock()
        clock.advance(1000)
        config = GraphConfig("tenant", "client", "https://login.example/tenant", "https://graph.example",
                             client_secret=Secret("s3cret"), tenant_backoff=60.0, tenant_backoff_max=3600.0)
        tokens = _PendingTokens()
        deliverer = GraphDeliverer(config, _Client(), tokens,
                                   ConfigCredentialResolver(credentials_from_config(config)), clock)
        message = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nhi\r\n".encode("ascii")
        directory = self.mktemp()
        results = [deliverer.deliver(make_entry(write_message(directory, message, f"m{i}.eml"), ALICE, [BOB],
                                                queue_id=f"Q{i}")) for i in range(6)]
        self.assertEqual(len(tokens.waiting), 6)
        for d in tokens.waiting:
            d.errback(TokenError("config", "AADSTS7000215", "Invalid client secret provided."))
        outcomes = [self.successResultOf(d) for d in results]
        self.assertEqual({o.retry_at for o in outcomes}, {clock.seconds() + 60})
        [health] = deliverer.health()
        self.assertEqual(health.paused_until, clock.seconds() + 60)
