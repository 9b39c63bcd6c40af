"""
Requests to the status endpoint are logged at debug level only: Twisted's Site logged one info
line per request, so Prometheus scraping /metrics (and a load balancer polling /healthz) filled
the default log with access lines between the per-message lines.
"""

from __future__ import annotations

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.testing.harness import start_gateway
from gateway.testing.logs import LogCapture


class StatusAccessLogTests(TestCase):
    @inlineCallbacks
    def test_scrapes_log_nothing_at_the_default_level(self):
        events = LogCapture.install(self)
        gw = yield start_gateway(self, {"status": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        port = yield gw.status_port()
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        for path in ("/metrics", "/healthz", "/"):
            response = yield http.get(f"http://127.0.0.1:{port}{path}", timeout=10)
            yield response.content()
            self.assertEqual(response.code, 200, path)
        requests = [e for e in events if "GET /" in (formatEvent(e) or "")]
        self.assertEqual(len(requests), 3, [formatEvent(e) for e in requests])  # still there for debugging
        self.assertEqual([formatEvent(e) for e in requests if e.get("log_level", LogLevel.info) > LogLevel.debug], [])
