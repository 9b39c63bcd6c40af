"""
What one delivery costs on the way to Graph when many are in flight (bench_drain's path):
persistent connections shared by 40 concurrent sends, no file-thread trip for a small
message, the request on the wire when it is written.  Counts that do not depend on the machine's load; the rates are measured in
``bench/bench_drain.py``.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.delivery.graph.deliverer import INLINE_PREPARE_LIMIT
from gateway.delivery.graph.factory import ConnectionsService, send_now
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


class SendNowTests(TestCase):
    """A request leaves when it is written, not after the rest of the reactor's turn."""

    timeout = 60

    @inlineCallbacks
    def test_request_is_on_the_wire_when_the_deliverer_returns(self):
        r = yield start_rig(self, reactor)
        directory = os.path.abspath(self.mktemp())

        def entry(name):
            return make_entry(write_message(directory, simple_message("alice@contoso.test", to=[BOB]), name),
                              "alice@contoso.test", [BOB], queue_id=name)

        first = yield r.deliverer.deliver(entry("first"))  # a token and a kept-alive connection
        self.assertIsInstance(first, Delivered)
        [connections] = [s for s in r.delivery.services if isinstance(s, ConnectionsService)]
        [connection] = [p for ps in connections.pool._connections.values() for p in ps]
        tls, tcp = connection.transport, connection.transport.transport
        d = r.deliverer.deliver(entry("second"))  # runs up to the request synchronously
        # Lengths only: the buffers hold the request, bearer token included.
        self.assertEqual(sum(map(len, tls._aggregator._buffer)), 0, "left for a callLater(0)")
        self.assertEqual(sum(map(len, tcp._tempDataBuffer)) + len(tcp.dataBuffer), 0, "left for epoll")
        self.assertIsInstance((yield d), Delivered)


class SendNowUnitTests(SynchronousTestCase):
    def transports(self, connected=True):
        calls = []

        class Aggregator:
            def flush(self):
                calls.append("tls flush")

        class Socket:
            disconnecting = False
            _tempDataBuffer = [b"request"]

            def doWrite(self):
                calls.append("socket write")

        socket = Socket()
        socket.connected = connected

        class TLS:
            _aggregator = Aggregator()
            transport = socket

        return TLS(), calls

    def test_flushes_tls_then_writes_the_socket(self):
        tls, calls = self.transports()
        send_now(tls)
        self.assertEqual(calls, ["tls flush", "socket write"])

    def test_a_closed_socket_is_left_to_the_reactor(self):
        tls, calls = self.transports(connected=False)
        send_now(tls)
        self.assertEqual(calls, ["tls flush"])
