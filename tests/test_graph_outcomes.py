"""Graph answers → outcomes, and Retry-After in both its forms."""

from __future__ import annotations

import email.utils

from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.client import (
    GraphResponse,
    GraphTransportError,
    parse_retry_after,
)
from gateway.delivery.graph.outcomes import failure_outcome, transport_outcome
from gateway.delivery.interfaces import Permanent, Transient


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
