"""
graphsmtp-queue: listing and offline changes on a real spool; with a "running daemon" (a
spool holding the lock plus a queue runner), changes go through request files that the runner
applies.
"""

from __future__ import annotations

import os
import subprocess
import sys

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import queue as queue_cli
from gateway.config.model import QueueConfig
from gateway.delivery.interfaces import Delivered, Transient
from gateway.queue.runner import QueueRunner
from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import AttemptRecord, Envelope, Provenance
from gateway.testing.delivery import ScriptedDeliverer
from gateway.testing.spool import make_test_spool
from gateway.testing.threads import ImmediateReactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = b"Subject: quarterly report\r\nFrom: app@example.com\r\n\r\nbody\r\n"


class QueueToolTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.clock = ImmediateReactor()
        self.clock.advance(1_700_000_000)
        self.spool = make_test_spool(self.directory, self.clock)
        self.addCleanup(self.spool.close)
        self.successResultOf(self.spool.recover_schedule())
        self.entry = self.accept()
        self.retried = attrs.evolve(self.accept(), attempts=2, next_attempt_at=4_000_000_000.0,
                                    history=(AttemptRecord(1_700_000_010, "Graph 503 Service Unavailable"),
                                             AttemptRecord(1_700_000_070, "Graph 429 throttled")))
        self.successResultOf(self.spool.update(self.retried))

    def accept(self):
        writer = self.successResultOf(self.spool.open_writer())
        writer.write(MESSAGE)
        return self.successResultOf(writer.commit(
            Envelope("app@example.com", ("a@example.com", "b@example.com")),
            Provenance("192.0.2.9", "printer.example", "default", tls=True, auth_identity="scanner")))

    def run_tool(self, *args):
        self.lines: list[str] = []
        return queue_cli.main(["--spool", self.directory, "--wait", "0", *args], environ={}, out=self.lines.append)

    @property
    def text(self):
        return "\n".join(self.lines)

    def stop_daemon(self):
        self.spool.close()

    def test_list(self):
        self.assertEqual(self.run_tool("list"), 0)
        self.assertIn(self.entry.queue_id, self.text)
        self.assertIn(self.retried.queue_id, self.text)
        row = next(line for line in self.lines if line.startswith(self.retried.queue_id))
        self.assertIn("app@example.com", row)
        self.assertIn("Graph 429 throttled", row)
        self.assertRegex(row, r"\s2\s+2\s+in ")  # 2 recipients, 2 attempts, next "in ..."
        self.assertIn("2 message(s)", self.text)

    def test_show(self):
        self.assertEqual(self.run_tool("show", self.retried.queue_id), 0)
        self.assertIn("recipient:     <b@example.com>", self.text)
        self.assertIn("printer.example [192.0.2.9] on listener default, tls=yes, auth=scanner", self.text)
        self.assertIn("Graph 503 Service Unavailable", self.text)
        self.assertIn("  Subject: quarterly report", self.text)
        self.assertEqual(self.run_tool("show", "0" * 19), queue_cli.EX_NOTFOUND)

    def test_offline_delete(self):
        self.stop_daemon()
        self.assertEqual(self.run_tool("delete", self.entry.queue_id), 0)
        self.assertEqual(SpoolDisk(self.directory).queue_ids(), [self.retried.queue_id])
        self.assertEqual(self.run_tool("delete", self.entry.queue_id), queue_cli.EX_NOTFOUND)
        self.assertEqual(self.run_tool("delete", "../../etc/passwd"), queue_cli.EX_USAGE)

    def test_offline_retry(self):
        self.stop_daemon()
        self.assertEqual(self.run_tool("retry", self.retried.queue_id), 0)
        record = SpoolDisk(self.directory).load(self.retried.queue_id)
        self.assertEqual(record.next_attempt_at, 0.0)
        self.assertEqual(record.attempts, 2)  # history is kept; only the timing changes

    def test_offline_failed_and_requeue(self):
        self.successResultOf(self.spool.fail(self.entry, "5.1.1 mailbox not found"))
        self.assertEqual(self.run_tool("failed"), 0)
        self.assertIn("5.1.1 mailbox not found", self.text)
        self.stop_daemon()
        self.assertEqual(self.run_tool("requeue", self.entry.queue_id), 0)
        disk = SpoolDisk(self.directory)
        self.assertIn(self.entry.queue_id, disk.queue_ids())
        self.assertEqual(disk.queue_ids(disk.layout.failed), [])

    def test_running_daemon_gets_requests(self):
        """With the lock held, the tool does not touch the queue; the daemon applies it."""
        deliverer = ScriptedDeliverer(Transient("down"), Transient("down"))
        deliverer.default = Delivered()
        self.successResultOf(self.spool.update(attrs.evolve(self.entry, next_attempt_at=4_000_000_000.0)))
        runner = QueueRunner(self.spool, deliverer, QueueConfig(), self.clock)
        runner.startService()
        self.addCleanup(runner.stopService)
        self.assertEqual(deliverer.calls, [])
        self.assertEqual(self.run_tool("delete", self.entry.queue_id), 0)
        self.assertIn("has not picked the request up yet", self.text)
        self.assertIn(self.entry.queue_id, SpoolDisk(self.directory).queue_ids())  # untouched by the tool
        self.assertEqual(self.run_tool("flush"), 0)
        runner.kick()
        self.assertEqual([e.queue_id for e in deliverer.calls], [self.retried.queue_id])
        self.assertEqual(SpoolDisk(self.directory).queue_ids(), [self.retried.queue_id])

    def test_no_spool(self):
        self.lines = []
        status = queue_cli.main(["--spool", self.mktemp(), "list"], environ={}, out=self.lines.append)
        self.assertEqual(status, queue_cli.EX_CONFIG)

    def test_subprocess_entry_point(self):
        self.stop_daemon()
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("GRAPHSMTP_CONFIG", None)
        result = subprocess.run([sys.executable, "-m", "gateway.cli.queue", "--spool", self.directory, "list"],
                                capture_output=True, env=env, cwd=ROOT, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(self.entry.queue_id.encode(), result.stdout)


# graphsmtp-queue's reading commands (list, show) run while the daemon works on the
# queue.  Archiving a delivered entry renames the message into archive/ and then the record; a
# listing in between finds a record without its message.  A read-only command must not react
# by moving the daemon's record into quarantine/ (the daemon's own rename then fails and the
# archived message is left without its record).
QUEUED_MESSAGE = b"Subject: s\r\n\r\nbody\r\n"


class ReadingDoesNotQuarantineTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        clock = ImmediateReactor()
        clock.advance(1_700_000_000)
        self.spool = make_test_spool(self.directory, clock, archive_delivered=True)
        self.addCleanup(self.spool.close)
        self.successResultOf(self.spool.recover_schedule())
        writer = self.successResultOf(self.spool.open_writer())
        writer.write(QUEUED_MESSAGE)
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
