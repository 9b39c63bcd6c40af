"""
A message delivered into the capture outbox is logged with ``relay=capture``: the log said
``relay=graph`` (the field's fallback whenever a mailbox is known), so the first-hour gateway
without Microsoft credentials claimed to have sent every message to Graph.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from gateway.logging import message_fields_text
from gateway.testing.harness import send_message, start_gateway
from gateway.testing.logs import LogCapture

MESSAGE = b"From: app@corp.example\r\nTo: alice@corp.example\r\nSubject: capture\r\n\r\nhello\r\n"


class CaptureRelayFieldTests(TestCase):
    @inlineCallbacks
    def test_delivered_line_says_capture(self):
        events = LogCapture.install(self)
        gw = yield start_gateway(self)
        self.assertEqual(gw.config.deliverer, "capture")
        code, _ = yield send_message(gw.port(), "app@corp.example", ["alice@corp.example"], MESSAGE)
        self.assertEqual(code, 250)
        [entry] = yield gw.delivered(1)
        [event] = [e for e in events if e.get("queue_id") == entry.queue_id and e.get("status") == "sent"]
        self.assertEqual(event["relay"], "capture")
        self.assertIn("relay=capture", message_fields_text(event))
        self.assertNotIn("relay=graph", message_fields_text(event) + formatEvent(event))
