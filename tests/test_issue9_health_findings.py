"""
Issue 9's findings in the health area, each as a test that uses only interfaces the starting
commit already had, so it fails there on its assertion (not on an import):

- a token endpoint answering 5xx left ``/healthz`` at 200 and ``graphsmtp_tenant_ok`` at 1,
  and the log said only ``internal: MsalServiceError``;
- error texts doubled the AADSTS code, ended in ``..`` and said ``token refused (None)``;
- ``--logger gateway.logging.json_observer`` wrote Twisted's raw event serialisation with no
  rendered text.
"""

from __future__ import annotations

import io
import json
import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.delivery.graph.token import classify_exception, classify_result
from gateway.logging import json_observer
from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import send_message, start_gateway
from gateway.testing.logs import LogCapture

MESSAGE = b"From: a@corp.example\r\nTo: b@corp.example\r\nSubject: s\r\n\r\nbody\r\n"


class TokenOutageOnHealthz(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_token_endpoint_5xx_is_not_healthy(self):
        fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(fake.stop)
        capture = LogCapture.install(self)
        fake.inject(Fault.status_code(503), operation="token", times=None)
        gw = yield start_gateway(self, {
            "graph": {"tenant_id": fake.tenant_id, "client_id": fake.client_id, "client_secret": fake.client_secret,
                      "authority": fake.authority, "graph_url": fake.graph_url, "ca_bundle": fake.ca_path},
            "status": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        port = yield gw.status_port()
        code, _ = yield send_message(gw.port(), "a@corp.example", ["b@corp.example"], MESSAGE)
        self.assertEqual(code, 250)
        yield gw.outcomes(1)
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = yield http.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        body = yield response.content()
        self.assertEqual(response.code, 503, body)
        self.assertNotEqual(json.loads(body)["status"], "ok")
        response = yield http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        metrics = (yield response.content()).decode()
        self.assertIn('graphsmtp_tenant_ok{state="degraded",tenant="default"} 0.0', metrics)
        self.assertNotIn("MsalServiceError", capture.text())


class ErrorTextTests(TestCase):
    """Entra's code once, no ``..``, no ``internal: MsalServiceError``."""

    def test_aadsts_code_is_not_doubled(self):
        error = classify_result({"error": "invalid_client", "error_codes": [7000215],
                                 "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the "
                                                      "secret being sent is the value.\r\nTrace ID: 1 Correlation ID: 2"})
        self.assertEqual(str(error).count("AADSTS7000215"), 1)
        self.assertNotIn("Trace ID", str(error))
        self.assertFalse(str(error).endswith("."))

    def test_msal_http_error_is_transient_with_the_status(self):
        from msal.exceptions import MsalServiceError

        error = classify_exception(MsalServiceError("HTTP Error: 503", error=None, error_description=None))
        self.assertEqual((error.kind, error.code), ("transient", "http_503"))
        self.assertNotIn("MsalServiceError", str(error))

    def test_deliverer_config_error_line_has_no_double_stop(self):
        from gateway.delivery.graph.deliverer import GraphDeliverer, _Tenant

        capture = LogCapture.install(self)
        deliverer = GraphDeliverer.__new__(GraphDeliverer)
        deliverer.clock = Clock()
        deliverer.config = type("C", (), {"tenant_backoff": 60.0, "tenant_backoff_max": 3600.0})()
        error = classify_result({"error": "invalid_client", "error_codes": [7000215],
                                 "error_description": "AADSTS7000215: Invalid client secret provided."})
        deliverer._token_failed(_Tenant("default"), error)
        text = "\n".join(capture.messages())
        self.assertIn("AADSTS7000215", text)
        self.assertNotIn("..", text)
        self.assertEqual(text.count("AADSTS7000215"), 1)


class TokenRefusedTextTests(TestCase):
    """A Graph 401 without an error body is logged with its status, not as ``(None)``."""

    timeout = 60

    @inlineCallbacks
    def test_401_without_error_code(self):
        from tests.graph_helpers import simple_message, start_rig

        capture = LogCapture.install(self)
        rig = yield start_rig(self, reactor)
        rig.server.inject(Fault(action="raw", status=401, body=b""), operation="sendMail")
        yield rig.deliverer.deliver(rig.entry(simple_message(), "alice@contoso.test", ["bob@fabrikam.test"]))
        text = "\n".join(capture.messages())
        self.assertIn("token refused (HTTP 401)", text)
        self.assertNotIn("(None)", text)


class RawJsonLogs(SynchronousTestCase):
    def test_json_lines_carry_rendered_text_not_twisted_serialisation(self):
        out = io.StringIO()
        Logger(namespace="gateway.spool.runner", observer=json_observer(out)).info(
            "delivered {queue_id}", queue_id="Q1", status="sent")
        [line] = out.getvalue().splitlines()
        self.assertFalse(line.startswith("\x1e"))
        record = json.loads(line)
        self.assertEqual(record.get("text"), "delivered Q1")
        self.assertEqual((record.get("queue_id"), record.get("status")), ("Q1", "sent"))
        self.assertFalse([k for k in record if k.startswith("log_")], record)
