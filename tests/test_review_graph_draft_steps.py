"""
Review: a 404 (or 416) on a step *after* the draft exists (PATCH, attachments, upload session,
chunk PUT, send) means the draft or the upload session went missing (replica lag, expired
session, a draft deleted by a mailbox rule or user).  The mailbox exists — createMessage just
worked — so the message must be retried with a fresh draft, not bounced as "mailbox not found".
A 404 on sendMail/createMessage is still the permanent "no such mailbox".
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.delivery.graph.client import GraphResponse
from gateway.delivery.graph.outcomes import failure_outcome
from gateway.delivery.interfaces import Delivered, Permanent, Transient
from gateway.testing.fake_graph import Fault
from tests.graph_helpers import simple_message, start_rig

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"
ERIN = "erin@hidden.test"


class OutcomeTableTests(TestCase):
    def test_missing_draft_or_session_is_transient(self):
        for step in ("patchMessage", "addAttachment", "createUploadSession", "upload", "send"):
            outcome = failure_outcome(GraphResponse(404, "ErrorItemNotFound", "not found"), 0.0, step)
            self.assertIsInstance(outcome, Transient, step)
            self.assertFalse(outcome.possibly_delivered, step)

    def test_upload_range_mismatch_is_transient(self):
        outcome = failure_outcome(GraphResponse(416, "ErrorInvalidRange", "bad range"), 0.0, "upload")
        self.assertIsInstance(outcome, Transient)

    def test_missing_mailbox_is_still_permanent(self):
        for step in ("sendMail", "createMessage"):
            outcome = failure_outcome(GraphResponse(404, "ErrorInvalidUser", "no such user"), 0.0, step)
            self.assertIsInstance(outcome, Permanent, step)
            self.assertEqual(outcome.status, "5.1.8")


class DraftVanishedTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_draft_gone_before_send_is_retried_and_then_delivered(self):
        r = yield start_rig(self, reactor, hidden_recipients="draft")
        r.server.inject(Fault.status_code(404, "ErrorItemNotFound", "The specified object was not found in the store."),
                        operation="send")
        entry = r.entry(simple_message(to=[BOB]), ALICE, [BOB, ERIN])
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Transient)
        again = yield r.deliverer.deliver(entry)
        self.assertIsInstance(again, Delivered)
