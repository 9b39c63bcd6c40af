"""Failure notices (RFC 3464) sent through the fake Graph from the postmaster mailbox."""

from __future__ import annotations

import email
import email.policy

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.delivery.graph.credentials import credentials_from_config
from gateway.delivery.graph.dsn import DSNObserver
from gateway.delivery.interfaces import Permanent
from tests.graph_helpers import simple_message, start_rig

POSTMASTER = "postmaster@contoso.test"
FAILURE = Permanent("sendMail: Graph 404 ErrorInvalidUser: The requested user is invalid.", status="5.1.8",
                    remote_code="ErrorInvalidUser")


class DSNTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.r = yield start_rig(self, reactor, postmaster=POSTMASTER, dsn=True)
        self.dsn = self.r.delivery.observers[0]
        self.assertIsInstance(self.dsn, DSNObserver)

    @inlineCallbacks
    def test_failure_notice_to_the_envelope_sender(self):
        entry = self.r.entry(simple_message(subject="quarterly report"), "app@contoso.test", ["bob@fabrikam.test", "erin@x.test"])
        yield self.dsn.failed(entry, FAILURE)
        [notice] = self.r.server.sent
        self.assertEqual((notice.mailbox, notice.to, notice.cc, notice.bcc), (POSTMASTER, ("app@contoso.test",), (), ()))
        msg = email.message_from_bytes(notice.mime, policy=email.policy.default)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["Subject"], "Undeliverable: quarterly report")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        parts = [p.get_content_type() for p in msg.iter_parts()]
        self.assertEqual(parts, ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        status = notice.mime.decode()
        self.assertIn("Final-Recipient: rfc822; bob@fabrikam.test", status)
        self.assertIn("Final-Recipient: rfc822; erin@x.test", status)
        self.assertIn("Status: 5.1.8", status)
        self.assertIn("ErrorInvalidUser", status)
        self.assertIn("Message-ID: <test-1@contoso.test>", status)
        self.assertNotIn("Hello Bob", status)  # headers only, never the body

    @inlineCallbacks
    def test_no_notice_to_null_sender_postmaster_or_automatic_mail(self):
        yield self.dsn.failed(self.r.entry(simple_message(), "", ["bob@fabrikam.test"]), FAILURE)
        yield self.dsn.failed(self.r.entry(simple_message(), POSTMASTER, ["bob@fabrikam.test"]), FAILURE)
        auto = simple_message()
        auto["Auto-Submitted"] = "auto-generated"
        yield self.dsn.failed(self.r.entry(auto, "app@contoso.test", ["bob@fabrikam.test"]), FAILURE)
        self.assertEqual(self.r.server.sent, [])

    def test_rate_limit(self):
        clock = Clock()
        dsn = DSNObserver(None, None, credentials_from_config(self.r.config), POSTMASTER, clock, rate=2)
        self.assertTrue(dsn._take_rate_slot())
        self.assertTrue(dsn._take_rate_slot())
        self.assertFalse(dsn._take_rate_slot())
        clock.advance(60)
        self.assertTrue(dsn._take_rate_slot())
