"""
Review: token endpoint answers that are not JSON (an HTML 429 from a front door or proxy, a
truncated body) are network trouble, not a configuration error: the tenant must not be paused
as "config-error" and the reason must not blame the credential.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.delivery.graph.token import classify_exception
from gateway.delivery.interfaces import Transient
from gateway.testing.fake_graph import Fault
from tests.graph_helpers import simple_message, start_rig


class ClassifyTests(TestCase):
    def test_json_decode_error_is_transient(self):
        try:
            json.loads("<html>Too Many Requests</html>")
        except ValueError as e:
            error = classify_exception(e)
        self.assertEqual(error.kind, "transient")


class TokenEndpointHtmlTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_html_429_from_the_token_endpoint_is_transient(self):
        r = yield start_rig(self, reactor)
        r.server.inject(Fault(action="raw", status=429, body=b"<html>Too Many Requests</html>"),
                        operation="token", times=None)
        outcome = yield r.deliverer.deliver(r.entry(simple_message(), "alice@contoso.test", ["bob@fabrikam.test"]))
        self.assertIsInstance(outcome, Transient)
        [health] = r.deliverer.health()
        self.assertEqual(health.state, "unreachable")
        self.assertEqual(health.paused_until, 0.0)
