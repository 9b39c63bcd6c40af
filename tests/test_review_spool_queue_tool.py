"""
Review: graphsmtp-queue's reading commands (list, show) run while the daemon works on the
queue.  Archiving a delivered entry renames the message into archive/ and then the record; a
listing in between finds a record without its message.  A read-only command must not react
by moving the daemon's record into quarantine/ (the daemon's own rename then fails and the
archived message is left without its record).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import queue as queue_cli
from gateway.spool.entry import Envelope, Provenance
from gateway.spool.testing import ImmediateReactor, make_test_spool

MESSAGE = b"Subject: s\r\n\r\nbody\r\n"


class ReadingDoesNotQuarantineTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        clock = ImmediateReactor()
        clock.advance(1_700_000_000)
        self.spool = make_test_spool(self.directory, clock, archive_delivered=True)
        self.addCleanup(self.spool.close)
        self.successResultOf(self.spool.recover_schedule())
        writer = self.successResultOf(self.spool.open_writer())
        writer.write(MESSAGE)
        self.entry = self.successResultOf(writer.commit(
            Envelope("app@example.com", ("a@example.com",)), Provenance("192.0.2.9", "c.example", "default")))
        # The daemon is half way through archiving: message moved, record not yet.
        os.rename(self.entry.message_path, os.path.join(self.directory, "archive", self.entry.queue_id + ".msg"))

    def run_tool(self, *args):
        lines: list[str] = []
        queue_cli.main(["--spool", self.directory, "--wait", "0", *args], environ={}, out=lines.append)
        return lines

    def assertRecordUntouched(self):
        self.assertEqual(os.listdir(os.path.join(self.directory, "quarantine")), [])
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", self.entry.queue_id + ".env")))

    def test_list_leaves_the_record_alone(self):
        self.run_tool("list")
        self.assertRecordUntouched()

    def test_show_leaves_the_record_alone(self):
        self.run_tool("show", self.entry.queue_id)
        self.assertRecordUntouched()
        # ...and the daemon's second rename still completes the archive move.
        os.rename(os.path.join(self.directory, "queue", self.entry.queue_id + ".env"),
                  os.path.join(self.directory, "archive", self.entry.queue_id + ".env"))
