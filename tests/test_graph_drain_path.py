"""
What one delivery costs on the way to Graph when many are in flight (bench_drain's path):
persistent connections shared by 40 concurrent sends, no file-thread trip for a small
message.  Counts that do not depend on the machine's load; the rates are measured in
``bench/bench_drain.py``.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.delivery.graph.deliverer import INLINE_PREPARE_LIMIT
from gateway.delivery.interfaces import Delivered
from gateway.testing.fake_graph import Fault
from tests.graph_helpers import make_entry, simple_message, start_rig, stub_rig, write_message

MAILBOXES = [f"m{i}@contoso.test" for i in range(20)]
BOB = "bob@fabrikam.test"


class ConnectionReuseTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_forty_concurrent_sends_reuse_their_connections(self):
        # 20 mailboxes x 2 in flight, as bench_drain runs them.  The first wave opens one
        # connection per request in flight; the second must reuse them all: a pool keeping
        # fewer (Twisted's default keeps 2 per host) makes most requests a new TLS handshake.
        r = yield start_rig(self, reactor)
        r.server.inject(Fault.slow(0.05), operation="sendMail", times=None)  # the 40 overlap
        directory = os.path.abspath(self.mktemp())

        def wave(name):
            entries = [make_entry(write_message(directory, simple_message(sender, to=[BOB]), f"{name}{i}.eml"),
                                  sender, [BOB], queue_id=f"{name}{i}")
                       for i, sender in enumerate(MAILBOXES * 2)]
            return gatherResults([r.deliverer.deliver(e) for e in entries])

        first = yield wave("a")
        opened = r.server.connections
        second = yield wave("b")
        self.assertEqual([type(o) for o in first + second], [Delivered] * 80)
        self.assertEqual(max(r.server.max_concurrency.values()), 2)
        self.assertGreaterEqual(opened, 40)
        self.assertEqual(r.server.connections, opened)  # no handshake in the second wave


class ThreadTripTests(SynchronousTestCase):
    """The file thread pool is for big messages; a small one is read where its body is."""

    def rig(self):
        trips = []

        def blocking(f, *args):
            trips.append(f.__name__)
            return maybeDeferred(f, *args)

        r = stub_rig(self)
        r.deliverer = r.stub.deliverer(r.config, blocking=blocking)
        return r, trips

    def test_small_message_is_prepared_without_a_thread_trip(self):
        r, trips = self.rig()
        entry = r.entry(simple_message(to=[BOB]), "alice@contoso.test", [BOB])
        self.assertLessEqual(entry.size, INLINE_PREPARE_LIMIT)
        outcome = self.successResultOf(r.deliver(entry))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(trips, [])
        [sent] = r.server.sent
        with open(entry.message_path, "rb") as f:
            self.assertEqual(sent.mime, f.read())

    def test_larger_message_is_prepared_in_the_file_threads(self):
        r, trips = self.rig()
        body = "A line of a long report, repeated to pass the inline limit.\n" * (INLINE_PREPARE_LIMIT // 50)
        entry = r.entry(simple_message(to=[BOB], body=body), "alice@contoso.test", [BOB])
        self.assertGreater(entry.size, INLINE_PREPARE_LIMIT)
        outcome = self.successResultOf(r.deliver(entry))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(trips, ["prepare_message"])
        [sent] = r.server.sent
        with open(entry.message_path, "rb") as f:
            self.assertEqual(sent.mime, f.read())
