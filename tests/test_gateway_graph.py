"""
SMTP in, Graph out: the whole gateway (real listener, real spool, real Graph deliverer with
MSAL and treq) delivering into the fake Graph + Entra over real HTTPS with a test CA.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.delivery.interfaces import Permanent
from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import send_message, start_gateway


def message(*headers: str, body: str = "hello from the printer") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode()


class SMTPToGraphTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(self.fake.stop)
        self.gw = yield start_gateway(self, {
            "graph": {
                "tenant_id": self.fake.tenant_id,
                "client_id": self.fake.client_id,
                "client_secret": self.fake.client_secret,
                "authority": self.fake.authority,
                "graph_url": self.fake.graph_url,
                "ca_bundle": self.fake.ca_path,
            },
            "queue": {"retry_schedule": ["1s"], "jitter": 0.0},
        })

    @inlineCallbacks
    def test_exact_recipients_bcc_delivered_and_unlisted_cc_excluded(self):
        mime = message(
            "From: Scanner <scanner@corp.example>",
            "To: alice@corp.example",
            "Cc: bob@corp.example",
            "Subject: invoice",
            "Message-ID: <scan-1@corp.example>",
        )
        # bob is in Cc but never given as RCPT; carol is an envelope-only (Bcc) recipient.
        code, _ = yield send_message(self.gw.port(), "scanner@corp.example", ["alice@corp.example", "carol@corp.example"], mime)
        self.assertEqual(code, 250)
        yield self.gw.delivered(1)
        [sent] = self.fake.sent_by("scanner@corp.example")
        self.assertEqual(sent.recipients, {"alice@corp.example", "carol@corp.example"})
        self.assertEqual(self.fake.received_by("bob@corp.example"), [])
        # Nobody can see carol in the delivered headers.
        if sent.message is not None:
            self.assertNotIn("carol", str(sent.message.get("To", "")) + str(sent.message.get("Cc", "")))

    @inlineCallbacks
    def test_headers_intact_when_envelope_matches(self):
        mime = message(
            "From: Scanner <scanner@corp.example>",
            "To: alice@corp.example",
            "Subject: =?utf-8?q?caf=C3=A9?=",
            "Message-ID: <scan-2@corp.example>",
            "References: <thread@corp.example>",
        )
        yield send_message(self.gw.port(), "scanner@corp.example", ["alice@corp.example"], mime)
        yield self.gw.delivered(1)
        [sent] = self.fake.sent_by("scanner@corp.example")
        self.assertEqual(sent.kind, "mime")
        self.assertEqual(sent.message["Message-ID"], "<scan-2@corp.example>")
        self.assertEqual(sent.message["References"], "<thread@corp.example>")
        self.assertEqual(sent.message["Subject"], "café")
        self.assertIn("graphsmtp", sent.message["Received"])

    @inlineCallbacks
    def test_throttling_is_retried_and_then_delivered(self):
        self.fake.inject(Fault.throttled(retry_after="1"), mailbox="scanner@corp.example", times=1)
        mime = message("From: scanner@corp.example", "To: alice@corp.example", "Subject: retry")
        yield send_message(self.gw.port(), "scanner@corp.example", ["alice@corp.example"], mime)
        events = yield self.gw.outcomes(2)
        self.assertEqual([kind for kind, _, _ in events], ["deferred", "delivered"])
        self.assertEqual(len(self.fake.sent_by("scanner@corp.example")), 1)

    @inlineCallbacks
    def test_unknown_mailbox_fails_permanently_with_graph_code(self):
        self.fake.inject(Fault.status_code(404, "ErrorInvalidUser", "The requested user is invalid."),
                         mailbox="ghost@corp.example", times=None)
        mime = message("From: ghost@corp.example", "To: alice@corp.example", "Subject: nope")
        yield send_message(self.gw.port(), "ghost@corp.example", ["alice@corp.example"], mime)
        [(kind, entry, outcome)] = yield self.gw.outcomes(1)
        self.assertEqual(kind, "failed")
        self.assertIsInstance(outcome, Permanent)
        self.assertIn("ErrorInvalidUser", f"{outcome.remote_code} {outcome.reason}")
        failed_dir = os.path.join(self.gw.config.spool.directory, "failed")
        self.assertTrue(any(entry.queue_id in name for name in os.listdir(failed_dir)))
