"""
The Graph deliverer with ``[cluster]``'s shared admission (a scripted stand-in here; the real
one is tested against Redis in test_cluster_admission and end to end in test_cluster_nodes):
the deliverer asks it before each send, turns "not now" into a not-attempted Transient that
pauses the runner's mailbox queue, releases the slot exactly once, shares a 429's pause, and
publishes / honours a tenant paused for credential trouble.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from gateway.cluster.admission import Later
from gateway.delivery.interfaces import CAUSE_THROTTLED, Delivered, Transient
from gateway.testing.fake_graph import Fault
from tests.graph_helpers import simple_message, start_rig

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"


class ScriptedAdmission:
    def __init__(self):
        self.answers = []
        self.asked = []
        self.released = 0
        self.succeeded_keys = []
        self.pauses = []
        self.tenant = None
        self.published = []
        self.resumed = []

    def admit(self, key, ticket):
        self.asked.append((key, ticket))
        if self.answers:
            return succeed(self.answers.pop(0))
        return succeed(_Slot(self))

    def pause(self, key, seconds, reason):
        self.pauses.append((key, seconds, reason))
        return reactor.seconds() + seconds

    def succeeded(self, key):
        self.succeeded_keys.append(key)

    def tenant_paused(self, tenant_key):
        return self.tenant

    def pause_tenant(self, tenant_key, until, detail):
        self.published.append((tenant_key, until, detail))

    def resume_tenant(self, tenant_key):
        self.resumed.append(tenant_key)


class _Slot:
    def __init__(self, owner):
        self.owner = owner

    def release(self):
        self.owner.released += 1


class SharedAdmissionTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def setUp(self):
        self.r = yield start_rig(self, reactor, request_timeout=2.0)
        self.admission = ScriptedAdmission()
        self.r.deliverer.admission = self.admission

    def deliver(self):
        return self.r.deliverer.deliver(self.r.entry(simple_message(sender=ALICE, to=[BOB]), ALICE, [BOB]))

    @inlineCallbacks
    def test_a_slot_is_asked_for_and_released_once(self):
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Delivered)
        [(key, ticket)] = self.admission.asked
        self.assertEqual(key[1], ALICE)
        self.assertEqual(ticket, "Q0001")
        self.assertEqual(self.admission.released, 1)
        self.assertEqual(self.admission.succeeded_keys, [key])

    @inlineCallbacks
    def test_not_now_pauses_the_runners_mailbox_queue_without_an_attempt(self):
        at = reactor.seconds() + 42
        self.admission.answers.append(Later(at, "pacing this mailbox"))
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        self.assertFalse(outcome.attempted)
        self.assertEqual((outcome.retry_at, outcome.pause_until, outcome.cause, outcome.pause_scope),
                         (at, at, CAUSE_THROTTLED, "mailbox"))
        self.assertEqual([r for r in self.r.server.requests if r.operation == "sendMail"], [])
        self.assertEqual(self.admission.released, 0)

    @inlineCallbacks
    def test_a_retry_after_is_shared(self):
        self.r.server.inject(Fault.throttled(retry_after="10"), operation="sendMail")
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        [(key, seconds, reason)] = self.admission.pauses
        self.assertTrue(9.5 < seconds <= 10.0, seconds)
        self.assertIn(ALICE, reason)
        self.assertEqual(self.admission.released, 1, "the slot is released even when Graph refuses")

    @inlineCallbacks
    def test_a_tenant_paused_by_another_node_is_not_even_asked_for_a_token(self):
        yield self.r.delivery.tenant_monitor.probe_all()  # the start-up probe is over
        tokens_before = self.r.server.token_requests
        self.admission.tenant = (reactor.seconds() + 300, "Graph refused a freshly issued token")
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        self.assertEqual((outcome.attempted, outcome.pause_scope), (False, "tenant"))
        self.assertEqual(self.r.server.token_requests, tokens_before)
        self.assertEqual(self.admission.asked, [])
        [health] = self.r.deliverer.health()
        self.assertEqual(health.state, "config-error")

    @inlineCallbacks
    def test_credential_trouble_seen_here_is_published(self):
        self.r.server.inject(Fault.status_code(401, "InvalidAuthenticationToken", "validation failure"),
                             operation="sendMail", times=2)
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        [(tenant_key, until, detail)] = self.admission.published
        self.assertEqual(until, outcome.pause_until)
        self.assertIn("Graph refused a freshly issued token", detail)
