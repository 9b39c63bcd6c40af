"""
Issue 10, exact send semantics: only ``202`` means Graph accepted a message (sendMail and a
draft's /send: https://learn.microsoft.com/graph/api/user-sendmail and
https://learn.microsoft.com/graph/api/message-send).  Any other 2xx is an "unexpected response": the
message may or may not have gone, so it is transient and counted as possibly delivered, never
reported as delivered.  Every other Graph step is held to its documented success code too.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.delivery.graph.client import GraphResponse
from gateway.delivery.graph.outcomes import (
    SUCCESS_CODES,
    step_succeeded,
    unexpected_outcome,
)
from gateway.delivery.interfaces import Delivered, Transient
from gateway.testing.fake_graph import Fault
from tests.graph_helpers import simple_message, start_rig, stub_rig

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"
ERIN = "erin@hidden.test"


class SuccessTableTests(SynchronousTestCase):
    def test_documented_success_codes(self):
        # sendMail 202 (https://learn.microsoft.com/graph/api/user-sendmail), draft 201
        # (https://learn.microsoft.com/graph/api/user-post-messages), upload session 201 (the beta
        # reference says 200: https://learn.microsoft.com/graph/api/attachment-createuploadsession),
        # chunks 200, the last 201 (https://learn.microsoft.com/graph/outlook-large-attachments),
        # send 202 (https://learn.microsoft.com/graph/api/message-send).
        self.assertEqual(SUCCESS_CODES["sendMail"], {202})
        self.assertEqual(SUCCESS_CODES["send"], {202})
        self.assertEqual(SUCCESS_CODES["createMessage"], {201})
        self.assertEqual(SUCCESS_CODES["addAttachment"], {201})
        self.assertEqual(SUCCESS_CODES["patchMessage"], {200})
        self.assertEqual(SUCCESS_CODES["createUploadSession"], {200, 201})
        self.assertEqual(SUCCESS_CODES["upload"], {200, 201, 202})
        self.assertEqual(SUCCESS_CODES["deleteMessage"], {204})

    def test_only_202_sends(self):
        for step in ("sendMail", "send"):
            self.assertTrue(step_succeeded(GraphResponse(202), step))
            for code in (200, 201, 203, 204, 206):
                self.assertFalse(step_succeeded(GraphResponse(code), step), (step, code))
                outcome = unexpected_outcome(GraphResponse(code), step)
                self.assertIsInstance(outcome, Transient)
                self.assertTrue(outcome.possibly_delivered)
                self.assertIn("unexpected response", outcome.reason)

    def test_unexpected_answer_to_a_preparatory_step_is_not_ambiguous(self):
        outcome = unexpected_outcome(GraphResponse(200), "createMessage")
        self.assertIsInstance(outcome, Transient)
        self.assertFalse(outcome.possibly_delivered)


class ExactSendTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_send_mail_200_with_unparseable_body_is_possibly_delivered(self):
        r = stub_rig(self)
        r.server.inject(Fault(action="raw", status=200, body=b"<html>proxy says hi</html>"), operation="sendMail")
        outcome = yield r.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB]))
        self.assertIsInstance(outcome, Transient)
        self.assertTrue(outcome.possibly_delivered)
        self.assertIn("unexpected response", outcome.reason)
        self.assertEqual((r.deliverer.stats.delivered, r.deliverer.stats.possibly_duplicated), (0, 1))

    @inlineCallbacks
    def test_send_mail_204_is_not_delivered(self):
        r = stub_rig(self)
        r.server.inject(Fault(action="raw", status=204), operation="sendMail")
        outcome = yield r.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB]))
        self.assertIsInstance(outcome, Transient)
        self.assertTrue(outcome.possibly_delivered)

    @inlineCallbacks
    def test_draft_send_200_is_possibly_delivered(self):
        r = stub_rig(self, hidden_recipients="draft")
        r.server.inject(Fault(action="raw", status=200, body=b"{not json"), operation="send")
        outcome = yield r.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB, ERIN]))
        self.assertIsInstance(outcome, Transient)
        self.assertTrue(outcome.possibly_delivered)
        self.assertEqual(r.deliverer.stats.delivered, 0)

    @inlineCallbacks
    def test_draft_created_with_200_is_unexpected(self):
        r = stub_rig(self, hidden_recipients="draft")
        r.server.inject(Fault(action="raw", status=200, body=b""), operation="createMessage")
        outcome = yield r.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB, ERIN]))
        self.assertIsInstance(outcome, Transient)
        self.assertFalse(outcome.possibly_delivered)
        self.assertIn("unexpected response", outcome.reason)
        self.assertEqual(r.server.sent, [])

    @inlineCallbacks
    def test_202_is_still_delivered_and_tokens_unaffected(self):
        # The token endpoint's 200 goes through MSAL, not the send table.
        r = yield start_rig(self, reactor)
        outcome = yield r.deliverer.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB]))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(r.server.token_requests, 1)
