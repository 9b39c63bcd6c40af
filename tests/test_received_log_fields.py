"""
The "received" line, the first of a message's state changes, carries the sender and the
recipients as structured fields like the delivered/deferred/failed lines do (README "Log
lines": each state change has queue_id, from, to, size…).  Before, a JSON log of an SMTP or
sendmail intake had only the client and a recipient count, so following one sender's mail in
Loki needed the delivery line.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from gateway.testing.harness import send_message, start_gateway
from gateway.testing.logs import LogCapture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = b"From: app@corp.example\r\nTo: alice@corp.example\r\nSubject: fields\r\n\r\nhello\r\n"


class ReceivedLineFieldsTests(TestCase):
    timeout = 30

    def capture(self) -> LogCapture:
        events = LogCapture.install(self)
        return events

    def received(self, events: LogCapture, queue_id: str) -> dict:
        [event] = [e for e in events if e.get("queue_id") == queue_id and formatEvent(e).startswith("received ")]
        return event

    @inlineCallbacks
    def test_smtp_received_line_has_from_and_to(self):
        events = self.capture()
        gw = yield start_gateway(self)
        code, text = yield send_message(gw.port(), "app@corp.example", ["alice@corp.example", "bob@corp.example"],
                                        MESSAGE)
        self.assertEqual(code, 250)
        [entry] = yield gw.delivered(1)
        event = self.received(events, entry.queue_id)
        self.assertEqual(event["from"], "app@corp.example")
        self.assertEqual(event["to"], ["alice@corp.example", "bob@corp.example"])
        self.assertEqual(event["size"], entry.size)

    @inlineCallbacks
    def test_sendmail_received_line_has_from_and_to(self):
        events = self.capture()
        gw = yield start_gateway(self)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "gateway.cli.sendmail", "--spool", gw.config.spool.directory, "-f", "cron@corp.example",
             "ops@corp.example"],
            env=dict(os.environ, PYTHONPATH=ROOT), path=ROOT, reactor=reactor,
            stdinBytes=b"Subject: nightly backup\n\nall done\n",
        )
        self.assertEqual(code, 0, err)
        [entry] = yield gw.delivered(1)
        event = self.received(events, entry.queue_id)
        self.assertEqual(event["from"], "cron@corp.example")
        self.assertEqual(event["to"], ["ops@corp.example"])
