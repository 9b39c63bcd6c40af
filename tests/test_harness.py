"""
The test harness plugin authors use (issue 15, "a harness that cannot hang and reads the same
way for every refusal"): ``gw.send`` fires with one result shape for MAIL, RCPT and DATA
refusals alike (``send_message`` raised for the first two and returned a tuple for the third),
and ``gw.delivered`` / ``gw.refused`` fail fast with what was sent and the log lines instead of
waiting for trial's 120-second timeout.
"""

from __future__ import annotations

import smtplib

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from gateway.delivery.interfaces import Delivered, IDeliverer, Permanent, Transient
from gateway.testing.harness import (
    HarnessTimeout,
    SendResult,
    send_message,
    start_gateway,
)

MESSAGE = b"From: alice@corp.example\r\nTo: bob@corp.example\r\nSubject: hi\r\n\r\nhello\r\n"


def listener(*policies):
    return {"listener": [{"name": "in", "endpoint": "tcp:0:interface=127.0.0.1",
                          "trusted_networks": ["127.0.0.0/8"], "policies": list(policies)}]}


@implementer(IDeliverer)
class AnsweringDeliverer:
    """Answers every delivery with one outcome (no network)."""

    def __init__(self, outcome):
        self.outcome = outcome

    def deliver(self, entry):
        return succeed(self.outcome)


class SendResultTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.gw = yield start_gateway(self, listener(
            {"use": "sender-allowlist", "allow": ["*@corp.example"], "check": ["envelope"]},
            {"use": "recipient-rules", "allow": ["*@corp.example"]},
            {"use": "size-limit", "max": 1000},
        ))

    @inlineCallbacks
    def test_mail_refusal_is_a_result(self):
        result = yield self.gw.send("mallory@evil.example", ["bob@corp.example"], MESSAGE)
        self.assertEqual(
            (result.accepted, result.refused_at, result.code, result.enhanced, result.text, result.queue_id),
            (False, "mail", 550, "5.7.1", "Sender address not allowed", None),
        )
        self.assertEqual(result.reply, "550 5.7.1 Sender address not allowed")

    @inlineCallbacks
    def test_rcpt_refusal_is_a_result(self):
        result = yield self.gw.send("alice@corp.example", ["eve@outside.example"], MESSAGE)
        self.assertEqual((result.accepted, result.refused_at, result.code, result.enhanced),
                         (False, "rcpt", 550, "5.7.1"))
        self.assertEqual(result.text, "Recipient address not allowed")
        self.assertEqual(dict(result.refused_recipients),
                         {"eve@outside.example": (550, "5.7.1 Recipient address not allowed")})

    @inlineCallbacks
    def test_data_refusal_is_a_result(self):
        big = MESSAGE + (b"x" * 70 + b"\r\n") * 20
        result = yield self.gw.send("alice@corp.example", ["bob@corp.example"], big)
        self.assertEqual((result.accepted, result.refused_at, result.code, result.enhanced),
                         (False, "data", 552, "5.3.4"))
        self.assertIn("Message too big", result.text)

    @inlineCallbacks
    def test_accepted_message_has_its_queue_id_and_is_delivered(self):
        result = yield self.gw.send("alice@corp.example", ["bob@corp.example"], MESSAGE)
        self.assertTrue(result.accepted, result)
        self.assertIsNone(result.refused_at)
        self.assertEqual((result.code, result.enhanced), (250, "2.0.0"))
        self.assertTrue(result.queue_id)
        [entry] = yield self.gw.delivered(timeout=10)
        self.assertEqual(entry.queue_id, result.queue_id)

    @inlineCallbacks
    def test_partly_refused_recipients_still_send_to_the_others(self):
        result = yield self.gw.send("alice@corp.example", ["bob@corp.example", "eve@outside.example"], MESSAGE)
        self.assertTrue(result.accepted, result)
        self.assertEqual(list(result.refused_recipients), ["eve@outside.example"])

    @inlineCallbacks
    def test_send_message_keeps_its_old_behaviour(self):
        with self.assertRaises(smtplib.SMTPSenderRefused):
            yield send_message(self.gw.port("in"), "mallory@evil.example", ["bob@corp.example"], MESSAGE)
        code, _ = yield send_message(self.gw.port("in"), "alice@corp.example", ["bob@corp.example"], MESSAGE)
        self.assertEqual(code, 250)

    @inlineCallbacks
    def test_delivered_fails_fast_with_what_was_sent(self):
        result = yield self.gw.send("alice@corp.example", ["eve@outside.example"], MESSAGE)
        self.assertEqual(result.refused_at, "rcpt")
        with self.assertRaises(HarnessTimeout) as caught:
            yield self.gw.delivered(timeout=0.2)
        text = str(caught.exception)
        self.assertIn("expected 1 message(s) delivered; nothing more happened for 0.2 s, saw 0", text)
        self.assertIn("alice@corp.example -> eve@outside.example: refused at RCPT: 550 5.7.1 Recipient address not allowed", text)
        self.assertIsInstance(caught.exception, AssertionError)


@implementer(IDeliverer)
class EventuallyDeliverer:
    """Transient ``failures`` times, then Delivered."""

    def __init__(self, failures):
        self.failures = failures

    def deliver(self, entry):
        if self.failures:
            self.failures -= 1
            return succeed(Transient("mailbox busy"))
        return succeed(Delivered())


class OutcomeWaitTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_timeout_restarts_while_the_queue_makes_progress(self):
        """Three retries 0.8 s apart take longer than the 2 s timeout: progress keeps it waiting."""
        gw = yield start_gateway(self, {"queue": {"retry_schedule": ["0.8s"], "jitter": 0.0}},
                                 deliverer=EventuallyDeliverer(3))
        start = reactor.seconds()
        result = yield gw.send("alice@corp.example", ["bob@corp.example"], MESSAGE)
        [entry] = yield gw.delivered(timeout=2)
        self.assertEqual(entry.queue_id, result.queue_id)
        self.assertEqual([kind for kind, _, _ in gw.recorder.events], ["deferred"] * 3 + ["delivered"])
        self.assertGreater(reactor.seconds() - start, 2.0)

    @inlineCallbacks
    def test_undelivered_message_names_its_queue_id_and_log_lines(self):
        gw = yield start_gateway(self, {"queue": {"retry_schedule": ["1h"], "jitter": 0.0}},
                                 deliverer=AnsweringDeliverer(Transient("mailbox busy")))
        result = yield gw.send("alice@corp.example", ["bob@corp.example"], MESSAGE)
        yield gw.outcomes(1, ("deferred",))
        with self.assertRaises(HarnessTimeout) as caught:
            yield gw.delivered(timeout=0.2)
        text = str(caught.exception)
        self.assertIn(f"accepted as {result.queue_id}", text)
        self.assertIn(f"deferred {result.queue_id}", text)
        self.assertIn(f"log lines for {result.queue_id}:", text)
        self.assertIn(f"received {result.queue_id} from", text)

    @inlineCallbacks
    def test_refused_waits_for_a_permanent_failure(self):
        gw = yield start_gateway(self, None, deliverer=AnsweringDeliverer(Permanent("no such mailbox", "5.1.1")))
        result = yield gw.send("alice@corp.example", ["bob@corp.example"], MESSAGE)
        [(entry, outcome)] = yield gw.refused(timeout=10)
        self.assertEqual((entry.queue_id, outcome.status), (result.queue_id, "5.1.1"))

    @inlineCallbacks
    def test_refused_fails_fast_when_the_message_was_delivered(self):
        gw = yield start_gateway(self)
        yield gw.send("alice@corp.example", ["bob@corp.example"], MESSAGE)
        yield gw.delivered(timeout=10)
        with self.assertRaises(HarnessTimeout) as caught:
            yield gw.refused(timeout=0.2)
        self.assertIn("refused by the next hop; nothing more happened for 0.2 s, saw 0", str(caught.exception))
        self.assertIn("  delivered ", str(caught.exception))


class GraphSideTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_graph_true_delivers_to_a_fake_graph_with_helpers(self):
        gw = yield start_gateway(self, None, graph=True)
        result = yield gw.send("alice@corp.example", ["bob@fabrikam.example"], MESSAGE)
        self.assertIsInstance(result, SendResult)
        yield gw.delivered(timeout=20)
        [sent] = gw.graph.sent_to("bob@fabrikam.example")
        self.assertEqual(sent.mailbox, "alice@corp.example")
        self.assertEqual(gw.graph.sent_by("alice@corp.example"), [sent])
        self.assertEqual(gw.graph.sent_to("carol@fabrikam.example"), [])
