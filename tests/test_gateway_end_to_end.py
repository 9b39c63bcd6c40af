"""
The whole gateway in-process: real SMTP clients on loopback, the real spool on disk, the
capture deliverer — what an admin gets from ``twistd -n graphsmtp`` with no configuration.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.testing.harness import send_message, start_gateway

MESSAGE = (
    b"From: Printer <printer@corp.example>\r\n"
    b"To: alice@corp.example\r\n"
    b"Subject: scan\r\n"
    b"\r\n"
    b"caf\xc3\xa9 8-bit body\r\n"
    b".leading dot\r\n"
)


class CaptureEndToEndTests(TestCase):
    @inlineCallbacks
    def test_message_reaches_capture_outbox_with_envelope_and_received(self):
        gw = yield start_gateway(self)
        code, text = yield send_message(
            gw.port(), "printer@corp.example", ["alice@corp.example", "bob@corp.example"], MESSAGE
        )
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[-1]
        [entry] = yield gw.delivered(1)
        self.assertEqual(entry.queue_id, queue_id)
        [message] = gw.outbox_messages()
        self.assertEqual(message["X-Graphsmtp-Queue-Id"], queue_id)
        self.assertEqual(message.get_all("X-Graphsmtp-Envelope-To"), ["<alice@corp.example>", "<bob@corp.example>"])
        received = message["Received"]
        self.assertIn(queue_id, received)
        self.assertIn("127.0.0.1", received)
        self.assertIsNotNone(message["Message-ID"])
        self.assertIsNotNone(message["Date"])
        body = message.get_payload(decode=True)
        self.assertIn("café 8-bit body".encode(), body)
        self.assertIn(b"\n.leading dot", body)
        # Delivered means removed from the queue.
        queue_dir = os.path.join(gw.config.spool.directory, "queue")
        self.assertEqual([n for n in os.listdir(queue_dir) if queue_id in n], [])

    @inlineCallbacks
    def test_configured_listener_is_not_an_open_relay(self):
        gw = yield start_gateway(self, {"listener": [{"name": "mx", "endpoint": "tcp:0:interface=127.0.0.1"}]})
        failure = yield self.assertFailure(
            send_message(gw.port("mx"), "a@example.com", ["b@example.com"], MESSAGE),
            smtplib.SMTPException,
        )
        text = str(failure)
        self.assertTrue("554" in text or "530" in text, text)
        self.assertEqual(gw.outbox_messages(), [])

    @inlineCallbacks
    def test_many_messages_all_delivered_once(self):
        gw = yield start_gateway(self)
        for i in range(5):
            code, _ = yield send_message(
                gw.port(), "a@corp.example", [f"r{i}@corp.example"], MESSAGE.replace(b"scan", b"scan %d" % i)
            )
            self.assertEqual(code, 250)
        yield gw.delivered(5)
        subjects = sorted(m["Subject"] for m in gw.outbox_messages())
        self.assertEqual(subjects, [f"scan {i}" for i in range(5)])
