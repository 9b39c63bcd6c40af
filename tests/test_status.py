"""
The status endpoint over real HTTP: health and metrics reflect the queue and delivery state,
and nothing secret or personal is in them.
"""

from __future__ import annotations

import json

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.testing.harness import send_message, start_gateway

MESSAGE = b"From: a@corp.example\r\nTo: b@corp.example\r\nSubject: s\r\n\r\nbody\r\n"


class StatusEndpointTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.gw = yield start_gateway(self, {
            "status": {"endpoint": "tcp:0:interface=127.0.0.1"},
            "listener": [{"name": "local", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.1/32"]}],
        })
        port = yield self.gw.status_port()
        self.base = f"http://127.0.0.1:{port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    @inlineCallbacks
    def get(self, path):
        response = yield self.http.get(self.base + path, timeout=10)
        body = yield response.content()
        return response, body

    @inlineCallbacks
    def test_health_counts_deliveries(self):
        yield send_message(self.gw.port("local"), "a@corp.example", ["b@corp.example"], MESSAGE)
        yield self.gw.delivered(1)
        response, body = yield self.get("/healthz")
        self.assertEqual(response.code, 200)
        state = json.loads(body)
        self.assertEqual(state["status"], "ok")
        self.assertEqual(state["queue"]["delivered_total"], 1)
        self.assertEqual(state["delivery"]["deliverer"], "CaptureDeliverer")
        self.assertEqual(state["listeners"][0]["name"], "local")
        self.assertNotIn(b"corp.example", body)

    @inlineCallbacks
    def test_metrics_are_prometheus_text(self):
        yield send_message(self.gw.port("local"), "a@corp.example", ["b@corp.example"], MESSAGE)
        yield self.gw.delivered(1)
        response, body = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        text = body.decode()
        self.assertIn("# TYPE graphsmtp_delivered_total counter", text)
        self.assertIn("graphsmtp_delivered_total 1", text)
        self.assertIn('graphsmtp_smtp_sessions{listener="local"}', text)
        self.assertIn("graphsmtp_auth_login_failures_total 0", text)
        self.assertNotIn("corp.example", text)
