"""
``graphsmtp-fake-graph`` run as a user would: the printed [graph] section loads as a real
configuration and a message delivered through it lands as a .eml file.
"""

from __future__ import annotations

import io
import os
import tomllib

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.config.loader import build_config
from gateway.delivery.graph.factory import build_graph_deliverer
from gateway.delivery.interfaces import Delivered
from gateway.testing.fake_graph_cli import build_parser, start
from tests.graph_helpers import make_entry, simple_message, write_message


class FakeGraphCommandTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_printed_configuration_delivers_into_the_sent_folder(self):
        directory = os.path.abspath(self.mktemp())
        out = io.StringIO()
        args = build_parser().parse_args(["--directory", directory, "--port", "0", "--mailbox", "alice@contoso.test"])
        server = yield start(reactor, args, out)
        self.addCleanup(server.stop)
        text = out.getvalue()
        self.assertIn(server.authority, text)
        self.assertIn(server.ca_path, text)
        self.assertNotIn(server.client_secret, text)  # the secret is only in its 0600 file
        section = tomllib.loads(text[text.index("[graph]"):])
        config = build_config(section, {}, {}, directory)
        self.assertEqual(config.deliverer, "graph")
        deliverer, services = build_graph_deliverer(config.graph, reactor)
        for service in services:
            service.startService()

        @inlineCallbacks
        def stop():
            for service in reversed(services):
                yield service.stopService()

        self.addCleanup(stop)
        path = write_message(os.path.join(directory, "spool"), simple_message(to=["bob@fabrikam.test"]))
        outcome = yield deliverer.deliver(make_entry(path, "alice@contoso.test", ["bob@fabrikam.test"]))
        self.assertIsInstance(outcome, Delivered)
        saved = os.path.join(directory, "sent", "alice@contoso.test", "1.eml")
        with open(saved, "rb") as f, open(path, "rb") as g:
            self.assertEqual(f.read(), g.read())
        self.assertIn(f"sent by alice@contoso.test (mime) to bob@fabrikam.test -> {saved}", out.getvalue())
        mallory = write_message(os.path.join(directory, "spool"), simple_message(sender="mallory@contoso.test"), "m2.eml")
        other = yield deliverer.deliver(make_entry(mallory, "mallory@contoso.test", ["bob@fabrikam.test"]))
        self.assertEqual(other.remote_code, "ErrorInvalidUser")  # --mailbox restricts who may send

    @inlineCallbacks
    def test_latency_and_no_save_for_benchmarks(self):
        directory = os.path.abspath(self.mktemp())
        out = io.StringIO()
        args = build_parser().parse_args(["--directory", directory, "--port", "0", "--latency", "0.05", "--no-save"])
        server = yield start(reactor, args, out)
        self.addCleanup(server.stop)
        slow = {(rule.operation, rule.fault.action, rule.fault.delay, rule.remaining) for rule in server._faults}
        self.assertEqual(slow, {("sendMail", "slow", 0.05, None), ("send", "slow", 0.05, None)})
        text = out.getvalue()
        config = build_config(tomllib.loads(text[text.index("[graph]"):]), {}, {}, directory)
        deliverer, services = build_graph_deliverer(config.graph, reactor)
        for service in services:
            service.startService()

        @inlineCallbacks
        def stop():
            for service in reversed(services):
                yield service.stopService()

        self.addCleanup(stop)
        path = write_message(os.path.join(directory, "spool"), simple_message(to=["bob@fabrikam.test"]))
        outcome = yield deliverer.deliver(make_entry(path, "alice@contoso.test", ["bob@fabrikam.test"]))
        self.assertIsInstance(outcome, Delivered)
        self.assertRegex(out.getvalue(), r"sent by alice@contoso\.test \(mime\) #1 connections [1-9]")
        self.assertFalse(os.path.exists(os.path.join(directory, "sent")))
        self.assertEqual(len(server.sent), 1)
