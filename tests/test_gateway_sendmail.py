"""
The sendmail command next to a running daemon: the message is durable when the command exits 0
and the daemon picks it up at once (inotify), not at its next periodic scan.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.testing.harness import start_gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SendmailPickupTests(TestCase):
    timeout = 20
    @inlineCallbacks
    def test_dropped_message_is_delivered_without_waiting_for_the_scan(self):
        def no_periodic_scan(components):
            components.runner.incoming_interval = 3600.0

        gw = yield start_gateway(self, prepare=no_periodic_scan)
        spool = gw.config.spool.directory
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "gateway.cli.sendmail", "--spool", spool, "-f", "cron@corp.example", "ops@corp.example"],
            env=dict(os.environ, PYTHONPATH=ROOT), path=ROOT, reactor=reactor,
            stdinBytes=b"Subject: nightly backup\n\nall done\n",
        )
        self.assertEqual(code, 0, err)
        [entry] = yield gw.delivered(1)
        self.assertEqual(entry.envelope.sender, "cron@corp.example")
        self.assertEqual(entry.envelope.recipients, ("ops@corp.example",))
        [message] = gw.outbox_messages()
        self.assertEqual(message["Subject"], "nightly backup")
        self.assertEqual(message.get_content().strip(), "all done")
