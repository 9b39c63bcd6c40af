"""
Contract tests for the delivery interfaces (gateway.delivery.interfaces): one mixin per
interface states what every implementation must do, and each implementation runs it.

- L{IDeliverer}: the capture outbox, Graph (over HTTPS to the fake Graph + Entra with real MSAL,
  and over a StubTreq-wrapped fake for speed), and the public scripted deliverer.  A deliverer
  hands the message to its next hop exactly once per call, to exactly the envelope recipients,
  and answers trouble at the next hop with a L{Transient} outcome, never an errback.
- L{IDeliveryObserver}: the JSON delivery log, the status page's recent list, the delay
  metric, the failure notice (DSN, to the fake Graph through StubTreq), the guard around plugin
  observers and the public recording observer.  Each records
  every outcome it is told about once, in order, and returns without raising.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from gateway.delivery.capture import CaptureDeliverer
from gateway.delivery.graph.credentials import credentials_from_config
from gateway.delivery.graph.dsn import DSNObserver
from gateway.delivery.interfaces import (
    Delivered,
    IDeliverer,
    IDeliveryObserver,
    Permanent,
    Transient,
)
from gateway.delivery.observers import GuardedObserver, JsonDeliveryLog
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.status.recent import DeliveryDelayObserver, RecentDeliveries
from gateway.testing.delivery import RecordingObserver, ScriptedDeliverer
from gateway.testing.fake_graph import Fault
from gateway.testing.harness import read_outbox
from gateway.testing.stub_graph import GraphTokens, StubGraph
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.graph_helpers import make_entry, simple_message, start_rig, write_message

SENDER = "alice@contoso.test"
RECIPIENTS = ("bob@fabrikam.test", "carol@fabrikam.test")


class DelivererContract:
    """
    What every L{IDeliverer} does.  A test case using it provides ``make_deliverer()`` (may
    return a Deferred), ``received()`` (the recipient sets the next hop got, in order) and
    ``break_next_hop()`` (the next hop fails from now on).
    """

    deliverer: Any

    def entry(self, name: str, recipients: tuple = RECIPIENTS) -> SpoolEntry:
        directory = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        message = simple_message(SENDER, to=recipients, subject=f"contract {name}")
        return make_entry(write_message(directory, message, f"{name}.eml"), SENDER, recipients, queue_id=name)

    def deliver(self, entry: SpoolEntry) -> Deferred:
        return self.deliverer.deliver(entry)

    @inlineCallbacks
    def setUp(self):
        self.deliverer = yield self.make_deliverer()

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(IDeliverer, self.deliverer))

    @inlineCallbacks
    def test_delivers_to_exactly_the_envelope_recipients(self):
        outcome = yield self.deliver(self.entry("Q1"))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(self.received(), [set(RECIPIENTS)])

    @inlineCallbacks
    def test_each_call_is_one_delivery(self):
        first = yield self.deliver(self.entry("Q1", ("bob@fabrikam.test",)))
        second = yield self.deliver(self.entry("Q2", ("carol@fabrikam.test",)))
        self.assertEqual((type(first), type(second)), (Delivered, Delivered))
        self.assertEqual(self.received(), [{"bob@fabrikam.test"}, {"carol@fabrikam.test"}])

    @inlineCallbacks
    def test_trouble_at_the_next_hop_is_transient_not_an_error(self):
        self.break_next_hop()
        outcome = yield self.deliver(self.entry("Q1"))
        self.assertIsInstance(outcome, Transient)
        self.assertTrue(outcome.reason)
        self.assertEqual(self.received(), [])


class CaptureDelivererContractTests(DelivererContract, TestCase):
    def make_deliverer(self):
        self.outbox = os.path.abspath(self.mktemp())
        return CaptureDeliverer(self.outbox, SynchronousThreadPool(), ImmediateReactor())

    def received(self):
        return [{a.strip("<>") for a in m.get_all("X-Graphsmtp-Envelope-To", [])} for m in read_outbox(self.outbox)]

    def break_next_hop(self):
        with open(self.outbox, "w") as f:  # the outbox path is a file: nothing can be written there
            f.write("not a directory")


class GraphOverHttpsDelivererContractTests(DelivererContract, TestCase):
    """The real Graph deliverer (MSAL, treq, TLS) against the fake Graph + Entra on loopback."""

    @inlineCallbacks
    def make_deliverer(self):
        self.rig = yield start_rig(self, reactor)
        return self.rig.deliverer

    def received(self):
        return [message.recipients for message in self.rig.server.sent]

    def break_next_hop(self):
        self.rig.server.inject(Fault.status_code(503, "ServiceUnavailable"), operation="sendMail", times=None)


class StubGraphDelivererContractTests(DelivererContract, TestCase):
    """The real Graph deliverer against the fake Graph through StubTreq (no sockets, no MSAL)."""

    def make_deliverer(self):
        self.stub = StubGraph.create()
        self.stub.clock.advance(time.time())
        return self.stub.deliverer()

    def deliver(self, entry):
        return maybeDeferred(self.stub.run, self.deliverer.deliver(entry))

    def received(self):
        return [message.recipients for message in self.stub.fake.sent]

    def break_next_hop(self):
        self.stub.fake.inject(Fault.status_code(503, "ServiceUnavailable"), operation="sendMail", times=None)


class ScriptedDelivererContractTests(DelivererContract, TestCase):
    def make_deliverer(self):
        self.outcomes: list = []
        return ScriptedDeliverer()

    def deliver(self, entry):
        return self.deliverer.deliver(entry).addCallback(lambda outcome: self.outcomes.append(outcome) or outcome)

    def received(self):
        calls = zip(self.deliverer.calls, self.outcomes, strict=True)
        return [set(entry.envelope.recipients) for entry, outcome in calls if isinstance(outcome, Delivered)]

    def break_next_hop(self):
        self.deliverer.default = Transient(reason="next hop down")


ENTRY = SpoolEntry(
    queue_id="Q1", envelope=Envelope(SENDER, RECIPIENTS),
    provenance=Provenance("192.0.2.1", "client.test", "submission", auth_identity="printer@contoso.test"),
    received_at=1_700_000_000.0, message_path="/nonexistent/Q1", size=100, attempts=1,
)


def _entry(queue_id: str) -> SpoolEntry:
    return SpoolEntry(queue_id=queue_id, envelope=ENTRY.envelope, provenance=ENTRY.provenance,
                      received_at=ENTRY.received_at, message_path=ENTRY.message_path, size=ENTRY.size,
                      attempts=ENTRY.attempts)


class ObserverContract:
    """
    What every L{IDeliveryObserver} does.  A test case using it provides ``make_observer()``
    and ``seen()`` (``(kind, queue_id)`` of each outcome the observer recorded, in order);
    ``kinds`` names the outcomes the observer records (the others it must accept silently).
    """

    kinds: tuple[str, ...] = ("delivered", "deferred", "failed")

    def expected(self, kind: str, queue_id: str) -> tuple:
        """How L{seen} shows an outcome of ``kind`` for ``queue_id``."""
        return (kind, queue_id)

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_060.0)
        self.observer = self.make_observer()

    def call(self, kind: str, entry: SpoolEntry, outcome: Any) -> Any:
        """Tell the observer about one outcome; what it returned."""
        return getattr(self.observer, kind)(entry, outcome)

    def tell(self) -> list:
        return [
            self.call("delivered", _entry("Q1"), Delivered("202 Accepted")),
            self.call("deferred", _entry("Q2"), Transient("Graph throttled", retry_at=1_700_000_120.0)),
            self.call("failed", _entry("Q3"), Permanent("Send-as denied", status="5.7.60", remote_code="ErrorSendAsDenied")),
        ]

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(IDeliveryObserver, self.observer))

    def test_records_each_outcome_once_in_order(self):
        self.tell()
        told = [("delivered", "Q1"), ("deferred", "Q2"), ("failed", "Q3")]
        self.assertEqual(self.seen(), [self.expected(kind, q) for kind, q in told if kind in self.kinds])

    def test_returns_without_raising_or_waiting(self):
        for value in self.tell():
            if isinstance(value, Deferred):
                self.successResultOf(value)
            else:
                self.assertIsNone(value)

    def test_bare_outcomes_are_fine(self):
        self.call("delivered", _entry("Q4"), Delivered())
        self.call("deferred", _entry("Q5"), Transient(reason=""))
        self.call("failed", _entry("Q6"), Permanent(reason=""))
        told = [("delivered", "Q4"), ("deferred", "Q5"), ("failed", "Q6")]
        self.assertEqual(self.seen(), [self.expected(kind, q) for kind, q in told if kind in self.kinds])


class RecordingObserverContractTests(ObserverContract, TestCase):
    def make_observer(self):
        return RecordingObserver()

    def seen(self):
        return [(kind, queue_id) for kind, queue_id, _ in self.observer.summary]


class JsonDeliveryLogContractTests(ObserverContract, TestCase):
    def make_observer(self):
        self.path = os.path.abspath(self.mktemp())
        log = JsonDeliveryLog(self.path, self.clock)
        log.open()
        self.addCleanup(log.close)
        return log

    def seen(self):
        with open(self.path, encoding="utf-8") as f:
            return [(record["outcome"], record["queue_id"]) for record in map(json.loads, f)]


class RecentDeliveriesContractTests(ObserverContract, TestCase):
    def make_observer(self):
        return RecentDeliveries(self.clock)

    def seen(self):
        return [(item.status, item.queue_id) for item in reversed(self.observer.snapshot())]


class DeliveryDelayObserverContractTests(ObserverContract, TestCase):
    kinds = ("delivered",)

    def make_observer(self):
        self.delays: list[float] = []
        return DeliveryDelayObserver(self.clock, self.delays.append)

    def expected(self, kind, queue_id):
        return (kind, 60.0)  # what it records of a delivery: the queue delay (clock - received_at)

    def seen(self):
        return [("delivered", delay) for delay in self.delays]


class GuardedObserverContractTests(ObserverContract, TestCase):
    def make_observer(self):
        self.inner = RecordingObserver()
        return GuardedObserver(self.inner, "recording")

    def seen(self):
        return [(kind, queue_id) for kind, queue_id, _ in self.inner.summary]

    def test_a_broken_observer_is_contained(self):
        broken = GuardedObserver(RecordingObserver(explode=True), "broken")
        broken.delivered(_entry("Q1"), Delivered())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class DSNObserverContractTests(ObserverContract, TestCase):
    """The failure notice observer, sending through the fake Graph behind StubTreq."""

    kinds = ("failed",)
    postmaster = "postmaster@contoso.test"

    def make_observer(self):
        self.stub = StubGraph.create(self.clock)
        tokens: Any = GraphTokens(self.stub.fake, self.clock)
        return DSNObserver(self.stub.client(), tokens, credentials_from_config(self.stub.config()), self.postmaster,
                           self.clock)

    def call(self, kind, entry, outcome):
        value = super().call(kind, entry, outcome)
        if isinstance(value, Deferred):
            self.stub.run(value)  # the notice goes out through the stub before the test looks
        return value

    def seen(self):
        seen = []
        for sent in self.stub.fake.sent:
            self.assertEqual((sent.mailbox, sent.recipients), (self.postmaster, {SENDER}))
            seen.append(("failed", sent.message["Message-ID"].split("-", 1)[1].split("@")[0]))
        return seen
