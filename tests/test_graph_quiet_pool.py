"""
A Graph connection logs nothing of its own: Twisted's HTTP client factory said "Starting
factory …" and "Stopping factory …" at info level for every new connection, two lines per
delivery attempt while Graph was unreachable (issue 10, "Quiet logs").
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.delivery.interfaces import Delivered
from gateway.testing.logs import LogCapture
from tests.graph_helpers import simple_message, start_rig


class QuietConnectionPoolTests(TestCase):
    @inlineCallbacks
    def test_new_graph_connections_log_no_factory_lines(self):
        log = LogCapture.install(self)
        rig = yield start_rig(self, reactor)
        entry = rig.entry(simple_message(to=["bob@fabrikam.test"]), "alice@contoso.test", ["bob@fabrikam.test"])
        outcome = yield rig.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Delivered)
        self.assertTrue(any(q.operation == "sendMail" for q in rig.server.requests))
        noise = [line for line in log.messages() if "_HTTP11ClientFactory" in line]
        self.assertEqual(noise, [])
