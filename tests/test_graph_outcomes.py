"""Graph answers → outcomes, and Retry-After in both its forms."""

from __future__ import annotations

import email.utils

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.delivery.graph.client import (
    GraphResponse,
    GraphTransportError,
    parse_retry_after,
)
from gateway.delivery.graph.outcomes import failure_outcome, transport_outcome
from gateway.delivery.interfaces import Delivered, Permanent, Transient
from gateway.testing.fake_graph import Fault
from gateway.testing.timezone import local_time_zone
from tests.graph_helpers import simple_message, stub_rig


class RetryAfterTests(SynchronousTestCase):
    def test_seconds_date_and_garbage(self):
        self.assertEqual(parse_retry_after([b"7"], 1000.0), 7.0)
        date = email.utils.formatdate(1030, usegmt=True).encode()
        self.assertEqual(parse_retry_after([date], 1000.0), 30.0)
        self.assertEqual(parse_retry_after([b"-5"], 1000.0), 0.0)
        self.assertEqual(parse_retry_after([b"soon"], 1000.0), None)
        self.assertEqual(parse_retry_after(None, 1000.0), None)
        self.assertEqual(parse_retry_after([b"99999999"], 0.0), 86400.0)


class OutcomeTests(SynchronousTestCase):
    def test_table(self):
        now = 100.0
        o = failure_outcome(GraphResponse(429, "ApplicationThrottled", "slow down", retry_after=9), now)
        self.assertEqual((type(o), o.retry_at, o.possibly_delivered), (Transient, 109.0, False))
        o = failure_outcome(GraphResponse(504, "GatewayTimeout", "x", body_sent=True), now)
        self.assertTrue(o.possibly_delivered)
        o = failure_outcome(GraphResponse(504, "GatewayTimeout", "x", body_sent=True), now, "createMessage")
        self.assertFalse(o.possibly_delivered)  # a draft that was never sent duplicates nothing
        self.assertFalse(failure_outcome(GraphResponse(503), now).possibly_delivered)
        o = failure_outcome(GraphResponse(403, "ErrorSendAsDenied", "no right", request_id="r1"), now)
        self.assertEqual((type(o), o.status, o.remote_code), (Permanent, "5.7.1", "ErrorSendAsDenied"))
        self.assertIn("request-id r1", o.reason)
        self.assertEqual(failure_outcome(GraphResponse(413), now).status, "5.3.4")
        self.assertEqual(failure_outcome(GraphResponse(409, "Conflict"), now).status, "5.0.0")

    def test_transport_failures(self):
        sent = transport_outcome(GraphTransportError("no answer within 60s", body_sent=True, timed_out=True))
        self.assertEqual((type(sent), sent.possibly_delivered), (Transient, True))
        unsent = transport_outcome(GraphTransportError("connection refused", body_sent=False, timed_out=False))
        self.assertFalse(unsent.possibly_delivered)
        upload = transport_outcome(GraphTransportError("reset", body_sent=True, timed_out=False), "upload")
        self.assertFalse(upload.possibly_delivered)


# a 404 (or 416) on a step *after* the draft exists (PATCH, attachments, upload session,
# chunk PUT, send) means the draft or the upload session went missing (replica lag, expired
# session, a draft deleted by a mailbox rule or user).  The mailbox exists — createMessage just
# worked — so the message must be retried with a fresh draft, not bounced as "mailbox not found".
# A 404 on sendMail/createMessage is still the permanent "no such mailbox".
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
        r = stub_rig(self, hidden_recipients="draft")
        r.server.inject(Fault.status_code(404, "ErrorItemNotFound", "The specified object was not found in the store."),
                        operation="send")
        entry = r.entry(simple_message(to=[BOB]), ALICE, [BOB, ERIN])
        outcome = yield r.deliver(entry)
        self.assertIsInstance(outcome, Transient)
        again = yield r.deliver(entry)
        self.assertIsInstance(again, Delivered)


# Retry-After in HTTP-date form is always GMT (RFC 9110 §5.6.7), including the obsolete
# asctime form that carries no zone; the local time zone of the gateway host must not shift it.
NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


class RetryAfterDateTests(TestCase):
    def setUp(self):
        local_time_zone(self, "America/New_York")

    def test_asctime_form_is_gmt(self):
        self.assertEqual(parse_retry_after([b"Tue Nov 14 22:14:50 2023"], NOW), 90.0)

    def test_rfc850_form_is_gmt(self):
        self.assertEqual(parse_retry_after([b"Tuesday, 14-Nov-23 22:14:50 GMT"], NOW), 90.0)

    def test_imf_fixdate(self):
        self.assertEqual(parse_retry_after([b"Tue, 14 Nov 2023 22:14:50 GMT"], NOW), 90.0)


class RefusalTableTests(SynchronousTestCase):
    """Each client-error status maps to one enhanced status code and a remote code, Graph's own first."""

    def test_status_and_remote_code_per_http_status(self):
        cases = [
            (GraphResponse(400), ("5.6.0", "BadRequest")),
            (GraphResponse(400, "ErrorInvalidRecipients"), ("5.1.3", "ErrorInvalidRecipients")),
            (GraphResponse(400, "ErrorMessageSizeExceeded"), ("5.3.4", "ErrorMessageSizeExceeded")),
            (GraphResponse(400, "SomethingNew"), ("5.6.0", "SomethingNew")),
            (GraphResponse(401), ("5.7.1", "Forbidden")),
            (GraphResponse(403), ("5.7.1", "Forbidden")),
            (GraphResponse(404), ("5.1.8", "NotFound")),
            (GraphResponse(404, "MailboxNotEnabledForRESTAPI"), ("5.1.8", "MailboxNotEnabledForRESTAPI")),
            (GraphResponse(413), ("5.3.4", "RequestEntityTooLarge")),
            (GraphResponse(409), ("5.0.0", None)),
            (GraphResponse(409, "Conflict"), ("5.0.0", "Conflict")),
        ]
        for response, expected in cases:
            outcome = failure_outcome(response, 0.0)
            self.assertIsInstance(outcome, Permanent)
            self.assertEqual((outcome.status, outcome.remote_code), expected, response)

    def test_a_missing_draft_is_transient_only_on_draft_steps(self):
        for step in ("patchMessage", "addAttachment", "createUploadSession", "upload", "send"):
            for code in (404, 416):
                self.assertIsInstance(failure_outcome(GraphResponse(code), 0.0, step), Transient, (step, code))
        self.assertIsInstance(failure_outcome(GraphResponse(404), 0.0, "sendMail"), Permanent)
        self.assertIsInstance(failure_outcome(GraphResponse(416), 0.0, "sendMail"), Permanent)

    def test_causes_of_waiting(self):
        self.assertEqual(failure_outcome(GraphResponse(429), 0.0).cause, "throttled")
        self.assertEqual(failure_outcome(GraphResponse(502), 0.0).cause, "service")
        self.assertIsNone(failure_outcome(GraphResponse(408), 0.0).cause)
