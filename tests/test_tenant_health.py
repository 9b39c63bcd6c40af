"""
Tenant health (issue 9 item 6): a token for every configured tenant at start-up and before
expiry; ``ok`` / ``degraded`` / ``needs-admin`` on ``/healthz``, ``/metrics`` and in the log (one
line per state change); clean error texts.

Integration tests run the whole gateway against the fake Graph + Entra over real HTTPS; unit
tests drive L{TenantHealthMonitor} with a clock and a scripted token source.
"""

from __future__ import annotations

import json
import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.config.graph import GraphConfig
from gateway.config.secrets import Secret
from gateway.delivery.graph.client import GraphResponse
from gateway.delivery.graph.credentials import (
    ConfigCredentialResolver,
    TenantCredentials,
    credentials_from_config,
)
from gateway.delivery.graph.deliverer import GraphDeliverer
from gateway.delivery.graph.tenant_health import (
    DEGRADED,
    NEEDS_ADMIN,
    OK,
    UNKNOWN,
    MonitoredTokens,
    TenantHealthMonitor,
)
from gateway.delivery.graph.token import (
    AccessToken,
    TokenError,
    classify_result,
)
from gateway.delivery.interfaces import Delivered, Transient
from gateway.testing.delivery import WAIT, FakeTokenSource
from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import start_gateway
from gateway.testing.logs import LogCapture
from tests.graph_helpers import make_entry, write_message

CREDENTIALS = TenantCredentials("tenant-a", "client-a", "https://login.example/tenant-a", "https://graph.example")


def monitor_lines(capture: LogCapture) -> list[str]:
    return [m for m, e in zip(capture.messages(), capture.events, strict=False) if e.get("log_namespace", "").endswith("TenantHealthMonitor")]


class MonitorUnitTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.tokens = FakeTokenSource(self.clock)
        self.monitor = TenantHealthMonitor(self.tokens, [CREDENTIALS], self.clock, retry=60.0, retry_max=3600.0)
        self.capture = LogCapture.install(self)

    def state(self):
        [status] = self.monitor.health()
        return status

    def test_probes_at_start_and_before_expiry(self):
        start = self.clock.seconds()
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        self.assertEqual(self.tokens.asked, [start])
        self.assertEqual(self.state().state, OK)
        # The token lives 3600 s; the gateway renews 300 s before expiry: the next probe comes then.
        self.clock.advance(3600 - 300 + 10 - 1)
        self.assertEqual(len(self.tokens.asked), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.tokens.asked), 2)

    def test_unknown_until_the_first_answer(self):
        pending = Deferred()
        self.tokens.script.append(pending)
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        self.assertEqual(self.state().state, UNKNOWN)
        pending.callback(AccessToken("t", self.clock.seconds() + 3600))
        self.assertEqual(self.state().state, OK)

    def test_outage_degrades_logs_once_and_recovers(self):
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        outage_start = self.clock.seconds() + 3310
        self.tokens.script.extend([TokenError("transient", "http_503", "the login host answered HTTP 503")] * 3)
        self.clock.advance(3310)
        status = self.state()
        self.assertEqual((status.state, status.since), (DEGRADED, outage_start))
        self.assertIn("token endpoint unreachable (HTTP 503)", status.describe())
        self.assertIn("since 20", status.describe())
        # Retries after 60 s, then 120 s; the state (and its start) stays, no new log line.
        self.clock.advance(60)
        self.clock.advance(120)
        self.assertEqual(len(self.tokens.asked), 4)
        self.assertEqual(self.state().since, outage_start)
        self.clock.advance(240)  # the fourth probe gets a token
        self.assertEqual(self.state().state, OK)
        lines = monitor_lines(self.capture)
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("ok (Graph token issued)", lines[0])
        self.assertIn("degraded (token endpoint unreachable (HTTP 503), since", lines[1])
        self.assertIn("ok again", lines[2])

    def test_degraded_retry_is_capped(self):
        self.tokens.script.extend([TokenError("transient", "network", "cannot reach the login host")] * 20)
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        for _ in range(10):
            self.clock.advance(300)
        self.assertGreaterEqual(len(self.tokens.asked), 8)

    def test_bad_credentials_need_admin_with_code_and_action(self):
        self.tokens.script.append(classify_result({
            "error": "invalid_client", "error_codes": [7000215],
            "error_description": "AADSTS7000215: Invalid client secret provided."}))
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        status = self.state()
        self.assertEqual(status.state, NEEDS_ADMIN)
        self.assertEqual(status.describe().count("AADSTS7000215"), 1)
        self.assertIn("bad client secret", status.detail)
        self.assertIn("graph.client_secret", status.action)
        [line] = monitor_lines(self.capture)
        self.assertIn("NEEDS ADMIN", line)
        self.assertNotIn("..", line)

    def test_deliveries_feed_the_state(self):
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        wrapped = MonitoredTokens(self.tokens, self.monitor)
        self.tokens.script.append(TokenError("transient", "http_502", "the login host answered HTTP 502"))
        failures = []
        wrapped.acquire(CREDENTIALS).addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        self.assertEqual(self.state().state, DEGRADED)

    def test_graph_refusing_tokens_reads_needs_admin(self):
        seen = type("Seen", (), {"label": "default", "state": "config-error", "since": 5.0, "paused_until": 9.0,
                                 "detail": "Graph refused a freshly issued token (Graph 401 X)."})()
        credentials = TenantCredentials("t", "c", "https://login.example/t", "https://graph.example")
        monitor = TenantHealthMonitor(self.tokens, [credentials], self.clock, graph_view=lambda: [seen])
        [status] = monitor.health()
        self.assertEqual((status.state, status.paused_until), (NEEDS_ADMIN, 9.0))
        self.assertFalse(status.detail.endswith("."))

    def test_stop_cancels_the_next_probe(self):
        self.monitor.startService()
        self.monitor.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class GatewayTenantHealthTests(TestCase):
    """The whole gateway, the fake Entra over HTTPS, ``/healthz`` and ``/metrics`` over HTTP."""

    timeout = 60

    @inlineCallbacks
    def start(self, **graph):
        self.fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(self.fake.stop)
        self.capture = LogCapture.install(self)
        if "before" in graph:
            graph.pop("before")(self.fake)
        settings = {
            "tenant_id": self.fake.tenant_id, "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret, "authority": self.fake.authority,
            "graph_url": self.fake.graph_url, "ca_bundle": self.fake.ca_path,
        }
        settings.update(graph)
        self.gw = yield start_gateway(self, {"graph": settings, "status": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        [self.monitor] = [s for s in self.gw.components.services if isinstance(s, TenantHealthMonitor)]
        port = yield self.gw.status_port()
        self.base = f"http://127.0.0.1:{port}"
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        yield self.monitor.probe_all()  # the start-up probe has answered

    @inlineCallbacks
    def get(self, path):
        response = yield self.http.get(self.base + path, timeout=10)
        body = yield response.content()
        return response.code, body

    @inlineCallbacks
    def test_start_up_probe_makes_the_tenant_ok(self):
        yield self.start()
        self.assertGreaterEqual(self.fake.token_requests, 1)
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 200)
        [tenant] = json.loads(body)["delivery"]["tenants"]
        self.assertEqual(tenant["state"], "ok")

    @inlineCallbacks
    def test_token_endpoint_5xx_at_start_is_degraded_on_healthz_metrics_and_log(self):
        yield self.start(before=lambda fake: fake.inject(Fault.status_code(503), operation="token", times=None))
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 503)
        state = json.loads(body)
        self.assertEqual(state["status"], "degraded")
        [tenant] = state["delivery"]["tenants"]
        self.assertEqual(tenant["state"], "degraded")
        self.assertIn("token endpoint unreachable (HTTP 503)", tenant["detail"])
        code, metrics = yield self.get("/metrics")
        self.assertIn('graphsmtp_tenant_ok{state="degraded",tenant="default"} 0.0', metrics.decode())
        self.assertIn('graphsmtp_tenant_state{state="degraded",tenant="default"} 1.0', metrics.decode())
        lines = monitor_lines(self.capture)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("degraded (token endpoint unreachable (HTTP 503), since", lines[0])
        self.assertNotIn("MsalServiceError", "\n".join(self.capture.messages()))

    @inlineCallbacks
    def test_token_endpoint_resetting_connections_is_degraded(self):
        yield self.start(before=lambda fake: fake.inject(Fault.reset(), operation="token", times=None))
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 503)
        [tenant] = json.loads(body)["delivery"]["tenants"]
        self.assertEqual(tenant["state"], "degraded")
        self.assertIn("token endpoint unreachable", tenant["detail"])

    @inlineCallbacks
    def test_token_endpoint_not_answering_is_degraded_after_the_timeout(self):
        yield self.start(before=lambda fake: fake.inject(Fault.hang(), operation="token", times=None),
                         token_timeout="1s")
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 503)
        [tenant] = json.loads(body)["delivery"]["tenants"]
        self.assertEqual(tenant["state"], "degraded")

    @inlineCallbacks
    def test_outage_after_start_then_recovery(self):
        yield self.start()
        self.fake.inject(Fault.status_code(503, retry_after="0"), operation="token", times=None)
        # The cached token reaching its renewal time, as the monitor's timer would find it.
        yield self.monitor.tokens.evict(credentials_from_config(self.gw.config.graph))
        [status] = yield self.monitor.probe_all()
        self.assertEqual(status.state, "degraded")
        code, _ = yield self.get("/healthz")
        self.assertEqual(code, 503)
        self.fake.clear_faults()
        [status] = yield self.monitor.probe_all()
        self.assertEqual(status.state, "ok")
        code, _ = yield self.get("/healthz")
        self.assertEqual(code, 200)
        lines = monitor_lines(self.capture)
        self.assertEqual(len(lines), 3, lines)

    @inlineCallbacks
    def test_graph_not_answering_is_degraded_until_it_answers_again(self):
        # A cached token hid a Graph outage: /healthz said ok while every send got a 503.
        yield self.start()
        self.fake.inject(Fault.status_code(503), operation="sendMail", times=None)
        message = b"From: alice@corp.example\r\nTo: bob@corp.example\r\nSubject: s\r\n\r\nbody\r\n"
        for _ in range(3):
            result = yield self.gw.send("alice@corp.example", ["bob@corp.example"], message)
            self.assertTrue(result.accepted, result.describe())
        yield self.gw.outcomes(3, kinds=("deferred",))
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 503)
        [tenant] = json.loads(body)["delivery"]["tenants"]
        self.assertEqual(tenant["state"], "degraded")
        self.assertIn("Graph not answering", tenant["detail"])
        self.fake.clear_faults()
        result = yield self.gw.send("alice@corp.example", ["carol@corp.example"], message)
        self.assertTrue(result.accepted, result.describe())
        yield self.gw.outcomes(1, kinds=("delivered",))
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 200, body)

    @inlineCallbacks
    def test_bad_secret_needs_admin_without_the_secret(self):
        wrong = "not-the-secret-Zq8"
        yield self.start(client_secret=wrong)
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 503)
        state = json.loads(body)
        self.assertEqual(state["status"], "needs-admin")
        [tenant] = state["delivery"]["tenants"]
        self.assertEqual(tenant["state"], "needs-admin")
        self.assertEqual(tenant["detail"].count("AADSTS7000215"), 1)
        self.assertIn("graph.client_secret", tenant["action"])
        self.assertNotIn(wrong.encode(), body)
        self.assertNotIn(wrong, self.capture.text())
        self.assertNotIn(self.fake.client_secret, self.capture.text())


# a tenant whose app Graph keeps refusing (401 even with a freshly issued token: missing
# Mail.Send consent, wrong tenant) must stay paused with *growing* backoff, and must not be
# reported as healthy between attempts just because Entra keeps issuing tokens.
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


class GraphRefusalBackoffTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.config = GraphConfig("tenant", "client", "https://login.example/tenant", "https://graph.example",
                                  client_secret=Secret("s3cret"), tenant_backoff=60.0, tenant_backoff_max=3600.0)
        self.client = _Client()
        self.deliverer = GraphDeliverer(self.config, self.client, FakeTokenSource(),
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


class ConcurrentConfigErrorTests(TestCase):
    """One bad-credential event seen by many concurrent deliveries is one step of backoff."""

    def test_concurrent_failures_pause_once(self):
        from gateway.delivery.graph.token import TokenError
        clock = Clock()
        clock.advance(1000)
        config = GraphConfig("tenant", "client", "https://login.example/tenant", "https://graph.example",
                             client_secret=Secret("s3cret"), tenant_backoff=60.0, tenant_backoff_max=3600.0)
        tokens = FakeTokenSource()
        tokens.script.extend([WAIT] * 6)
        deliverer = GraphDeliverer(config, _Client(), tokens,
                                   ConfigCredentialResolver(credentials_from_config(config)), clock)
        message = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nhi\r\n".encode("ascii")
        directory = self.mktemp()
        results = [deliverer.deliver(make_entry(write_message(directory, message, f"m{i}.eml"), ALICE, [BOB],
                                                queue_id=f"Q{i}")) for i in range(6)]
        self.assertEqual(len(tokens.pending), 6)
        for d in tokens.pending:
            d.errback(TokenError("config", "AADSTS7000215", "Invalid client secret provided."))
        outcomes = [self.successResultOf(d) for d in results]
        self.assertEqual({o.retry_at for o in outcomes}, {clock.seconds() + 60})
        [health] = deliverer.health()
        self.assertEqual(health.paused_until, clock.seconds() + 60)
