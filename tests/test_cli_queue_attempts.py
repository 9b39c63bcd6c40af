"""
Issue 9 item 7, queue tool part: a message that failed on its first attempt shows
``attempts: 1`` (it said 0), requeue keeps the count (it reset it), and every queue/sendmail
command-line error is one line with a sysexits status.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import queue as queue_cli
from gateway.cli import sendmail
from gateway.config.model import QueueConfig
from gateway.delivery.interfaces import Permanent
from gateway.queue.runner import QueueRunner
from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance
from gateway.testing.delivery import ScriptedDeliverer
from gateway.testing.spool import make_test_spool
from gateway.testing.threads import ImmediateReactor

MESSAGE = b"Subject: s\r\nFrom: app@example.com\r\n\r\nbody\r\n"
SYSEXITS = range(64, 79)


class AttemptsTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.clock = ImmediateReactor()
        self.clock.advance(1_700_000_000)
        self.spool = make_test_spool(self.directory, self.clock)
        self.addCleanup(self.spool.close)
        self.deliverer = ScriptedDeliverer(Permanent("mailbox not found", status="5.1.1"))
        self.runner = QueueRunner(self.spool, self.deliverer, QueueConfig(), self.clock)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        writer = self.successResultOf(self.spool.open_writer())
        writer.write(MESSAGE)
        self.entry = self.successResultOf(writer.commit(
            Envelope("app@example.com", ("a@example.com",)), Provenance("192.0.2.9", "p.example", "default")))
        self.assertEqual(len(self.deliverer.calls), 1)
        self.disk = SpoolDisk(self.directory)

    def run_tool(self, *args):
        self.lines: list[str] = []
        return queue_cli.main(["--spool", self.directory, "--wait", "0", *args], environ={}, out=self.lines.append)

    def test_failed_on_first_attempt_counts_one(self):
        record = self.disk.load(self.entry.queue_id, directory=self.disk.layout.failed)
        self.assertEqual(record.attempts, 1)
        self.assertIn("mailbox not found", record.history[-1].reason)
        self.assertEqual(self.run_tool("show", self.entry.queue_id), 0)
        self.assertIn("attempts:      1", "\n".join(self.lines))
        with open(os.path.join(self.disk.layout.failed, self.entry.queue_id + ".reason")) as f:
            self.assertIn("attempts: 1\n", f.read())

    def test_offline_requeue_keeps_the_count(self):
        self.runner.stopService()
        self.spool.close()
        self.assertEqual(self.run_tool("requeue", self.entry.queue_id), 0)
        record = self.disk.load(self.entry.queue_id)
        self.assertEqual(record.attempts, 1)
        self.assertEqual(record.next_attempt_at, 0.0)
        self.assertIn("requeued by admin", record.history[-1].reason)

    def test_requeue_through_the_daemon_keeps_the_count(self):
        self.deliverer.outcomes.append("wait")
        self.assertEqual(self.run_tool("requeue", self.entry.queue_id), 0)
        self.runner.kick()
        [first, second] = self.deliverer.calls
        self.assertEqual(second.attempts, 1)


class OneLineErrorTests(SynchronousTestCase):
    def capture(self, f, *args, **kwargs):
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        status = f(*args, **kwargs)
        self.stderr = err.getvalue()
        return status

    def assertOneLine(self, prefix):
        self.assertEqual(self.stderr.count("\n"), 1, self.stderr)
        self.assertTrue(self.stderr.startswith(prefix), self.stderr)
        self.assertNotIn("Traceback", self.stderr)

    def test_queue_usage_errors(self):
        for argv in (["frobnicate"], [], ["show"], ["list", "--bogus"], ["--wait", "soon", "list"]):
            status = self.capture(queue_cli.main, argv, environ={}, out=lambda line: None)
            self.assertEqual(status, queue_cli.EX_USAGE, argv)
            self.assertOneLine("graphsmtp-queue: ")

    def test_queue_missing_message_is_sysexits(self):
        directory = os.path.abspath(self.mktemp())
        spool = make_test_spool(directory)
        self.successResultOf(spool.recover_schedule())
        spool.close()
        status = self.capture(queue_cli.main, ["--spool", directory, "show", "0" * 19], environ={}, out=lambda line: None)
        self.assertIn(status, SYSEXITS)
        self.assertOneLine("graphsmtp-queue: ")

    def test_queue_no_spool_is_config_error(self):
        status = self.capture(queue_cli.main, ["--spool", self.mktemp(), "list"], environ={}, out=lambda line: None)
        self.assertEqual(status, queue_cli.EX_CONFIG)
        self.assertOneLine("graphsmtp-queue: ")

    def test_queue_unexpected_error_is_one_line(self):
        directory = os.path.abspath(self.mktemp())
        spool = make_test_spool(directory)
        self.successResultOf(spool.recover_schedule())
        spool.close()

        def explode(self, *args, **kwargs):
            raise RuntimeError("boom\nsecond line")
        self.patch(queue_cli.QueueTool, "list", explode)
        status = self.capture(queue_cli.main, ["--spool", directory, "list"], environ={}, out=lambda line: None)
        self.assertEqual(status, queue_cli.EX_SOFTWARE)
        self.assertOneLine("graphsmtp-queue: ")

    def test_sendmail_unknown_option_is_one_line(self):
        status = self.capture(sendmail.main, ["-x", "a@example.com"], stdin=io.BytesIO(b""), environ={})
        self.assertEqual(status, sendmail.EX_USAGE)
        self.assertOneLine("graphsmtp-sendmail: ")
        status = self.capture(sendmail.main, ["--frob", "a@example.com"], stdin=io.BytesIO(b""), environ={})
        self.assertEqual(status, sendmail.EX_USAGE)
        self.assertOneLine("graphsmtp-sendmail: ")
