"""
Importing sendmail drop-offs from incoming/ (L{gateway.spool.incoming}), the rules SMTP
intake applies at the end of DATA included: a drop-off whose message has a line over 998
octets or a NUL (RFC 5322 §2.1.1, §2.3) is never delivered, and never lost either — it is
failed at import, with the reason, where the admin finds it (``graphsmtp-queue show``).

The drop-offs are written through the spool's own API, as an older graphsmtp-sendmail (or any
program writing into incoming/ directly) would leave them: the command's own check cannot be
what protects the daemon.
"""

from __future__ import annotations

import hashlib
import os
import time

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.queueid import new_queue_id
from gateway.spool.record import encode_record
from gateway.testing.harness import start_gateway
from gateway.testing.spool import FailingFileOps, make_test_spool

ENVELOPE = Envelope("cron@corp.example", ("alice@corp.example",))
PROVENANCE = Provenance("", "", "sendmail")
LINE_LIMIT = 998  # RFC 5322 section 2.1.1, without the CRLF
HEADER = b"From: cron@corp.example\r\nTo: alice@corp.example\r\nSubject: report\r\n\r\n"


def _drop(disk: SpoolDisk, message: bytes, digest: bool = True) -> str:
    """Leave ``message`` in incoming/ as graphsmtp-sendmail does; returns its queue id."""
    now = time.time()  # also the mtime of its temp record: a running daemon must not take it for abandoned
    queue_id = new_queue_id(now)
    temp = disk.create_temp(queue_id, incoming=True)
    disk.append(temp, [message])
    entry = SpoolEntry(queue_id, ENVELOPE, PROVENANCE, now, "", temp.size)
    published = disk.publish(temp, entry, incoming=True)
    if not digest:
        # An older sendmail command wrote no digest: rewrite the record without it.
        env = os.path.join(disk.layout.incoming, queue_id + ".env")
        with open(env, "wb") as f:
            f.write(encode_record(attrs.evolve(published, message_digest=None)))
    return queue_id


class ImportRulesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.disk = SpoolDisk(os.path.abspath(self.mktemp()))
        self.disk.ensure_directories()

    def assert_failed_at_import(self, queue_id: str, message: bytes, words: str) -> None:
        layout = self.disk.layout
        self.assertEqual(self.disk.queue_ids(), [])
        self.assertEqual(os.listdir(layout.incoming), [])
        self.assertEqual(self.disk.queue_ids(layout.failed), [queue_id])
        failed = self.disk.load(queue_id, layout.failed)
        with open(failed.message_path, "rb") as f:
            self.assertEqual(f.read(), message)  # kept whole for the admin: nothing lost
        self.assertEqual(failed.provenance.listener, "sendmail")
        reason = self.disk.failure_reason(queue_id)
        self.assertIn("refused at import", reason)
        self.assertIn(words, reason)

    def test_line_over_998_octets_is_failed_not_queued(self) -> None:
        message = HEADER + b"x" * (LINE_LIMIT + 1) + b"\r\nend\r\n"
        queue_id = _drop(self.disk, message)
        scan = self.disk.scan_incoming()
        self.assertEqual(scan.entries, [])
        [refused] = scan.refused
        self.assertEqual(refused.entry.queue_id, queue_id)
        self.assertIn("998", refused.reason)
        self.assert_failed_at_import(queue_id, message, "longer than 998 characters")

    def test_nul_is_failed_not_queued(self) -> None:
        message = HEADER + b"bin\x00ary\r\n"
        queue_id = _drop(self.disk, message)
        scan = self.disk.scan_incoming()
        self.assertEqual(scan.entries, [])
        self.assertEqual([r.entry.queue_id for r in scan.refused], [queue_id])
        self.assert_failed_at_import(queue_id, message, "NUL")

    def test_line_of_exactly_998_octets_is_imported(self) -> None:
        queue_id = _drop(self.disk, HEADER + b"x" * LINE_LIMIT + b"\r\n")
        scan = self.disk.scan_incoming()
        self.assertEqual([e.queue_id for e in scan.entries], [queue_id])
        self.assertEqual(scan.refused, [])
        self.assertEqual(self.disk.queue_ids(), [queue_id])

    def test_older_record_without_digest_is_checked_and_digested_in_one_pass(self) -> None:
        good = HEADER + b"fine\r\n"
        good_id = _drop(self.disk, good, digest=False)
        bad_id = _drop(self.disk, HEADER + b"y" * 5000 + b"\r\n", digest=False)
        scan = self.disk.scan_incoming()
        [imported] = scan.entries
        self.assertEqual(imported.queue_id, good_id)
        self.assertEqual(imported.message_digest, "sha256:" + hashlib.sha256(good).hexdigest())
        self.assertEqual([r.entry.queue_id for r in scan.refused], [bad_id])

    def test_recovery_fails_it_before_the_runner_sees_a_schedule(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        message = HEADER + b"z" * 2000 + b"\r\n"
        queue_id = _drop(self.disk, message)
        spool = make_test_spool(self.disk.layout.root)
        self.addCleanup(spool.close)
        schedule = self.successResultOf(spool.recover_schedule())
        self.assertEqual(schedule, [])
        self.assert_failed_at_import(queue_id, message, "longer than 998 characters")
        lines = [formatEvent(e) for e in events]
        self.assertTrue(any(queue_id in line and "refused at import" in line for line in lines), lines)

    def test_running_daemon_scan_logs_and_does_not_hand_it_to_the_runner(self) -> None:
        spool = make_test_spool(self.disk.layout.root)
        self.addCleanup(spool.close)
        self.successResultOf(spool.recover_schedule())
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        good_id = _drop(self.disk, HEADER + b"fine\r\n")
        bad_id = _drop(self.disk, HEADER + b"\x00\r\n")
        scan = self.successResultOf(spool.scan_incoming())
        self.assertEqual([e.queue_id for e in scan.entries], [good_id])
        self.assertEqual(self.disk.queue_ids(self.disk.layout.failed), [bad_id])
        refusals = [formatEvent(e) for e in events if bad_id in formatEvent(e)]
        self.assertEqual(len(refusals), 1, refusals)
        self.assertIn("NUL", refusals[0])


    def test_disk_trouble_while_failing_it_delivers_it_rather_than_strand_it(self) -> None:
        queue_id = _drop(self.disk, HEADER + b"\x00\r\n")
        # The import's two renames work, the first rename of the move to failed/ does not.
        disk = SpoolDisk(self.disk.layout.root, FailingFileOps("rename", after=2))
        scan = disk.scan_incoming()
        [refused] = scan.refused
        self.assertIn("NUL", refused.reason)
        self.assertIsNotNone(refused.error)
        self.assertEqual([e.queue_id for e in scan.entries], [queue_id])
        self.assertEqual(self.disk.queue_ids(), [queue_id])
        self.assertEqual(self.disk.load(queue_id).provenance.listener, "sendmail")


    def test_crash_between_import_and_failing_it_loses_nothing(self) -> None:
        message = HEADER + b"w" * 1500 + b"\r\n"
        queue_id = _drop(self.disk, message)
        crashing = SpoolDisk(self.disk.layout.root, _CrashAtRename(after=2))  # import done, fail not begun
        self.assertRaises(_Crash, crashing.scan_incoming)
        recovering = SpoolDisk(self.disk.layout.root)
        self.addCleanup(recovering.release_lock)
        report = recovering.recover()
        # Queued whole (as every drop-off was before the rule), so the runner delivers it.
        self.assertEqual([queue_id for _, queue_id in report.schedule], [queue_id])
        self.assertEqual(os.listdir(self.disk.layout.failed), [])
        self.assertEqual(os.listdir(self.disk.layout.tmp), [])  # the half-written reason is gone
        with open(SpoolDisk(self.disk.layout.root).load(queue_id).message_path, "rb") as f:
            self.assertEqual(f.read(), message)


class RunningGatewayTests(TestCase):
    """The real daemon: its incoming/ watcher imports both drop-offs and delivers only the good one."""

    timeout = 20

    @inlineCallbacks
    def test_refused_drop_off_waits_in_failed_while_the_good_one_is_delivered(self):
        gw = yield start_gateway(self)
        disk = SpoolDisk(gw.config.spool.directory)  # an older sendmail command, without its own check
        bad_id = _drop(disk, HEADER + b"q" * 1200 + b"\r\n")
        _drop(disk, HEADER + b"fine\r\n")
        [delivered] = yield gw.delivered(1)
        self.assertNotEqual(delivered.queue_id, bad_id)
        self.assertEqual(len(gw.outbox_messages()), 1)
        self.assertEqual(disk.queue_ids(disk.layout.failed), [bad_id])
        self.assertIn("longer than 998 characters", disk.failure_reason(bad_id))


class _Crash(BaseException):
    """The process dies here: no except OSError clean-up runs."""


class _CrashAtRename(FileOps):
    def __init__(self, after: int) -> None:
        self.after = after

    def rename(self, src: str, dst: str) -> None:
        if self.after == 0:
            raise _Crash()
        self.after -= 1
        super().rename(src, dst)


class InspectMessageFileTests(SynchronousTestCase):
    """The streaming check sees the same lines whatever the read blocks cut them into."""

    def inspect(self, data: bytes, block: int = 7) -> str | None:
        from gateway.spool import message_rules

        self.patch(message_rules, "_READ", block)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return message_rules.inspect_message_file(path, digest=False).problem

    def test_block_boundaries_do_not_hide_or_invent_a_long_line(self) -> None:
        ok = (b"a" * LINE_LIMIT + b"\r\n") * 3 + b"b" * 10 + b"\r\n"
        long_line = b"a\r\n" + b"c" * (LINE_LIMIT + 1) + b"\r\nd\r\n"
        for block in (1, 2, 7, 999, 1000, 1001, 4096):
            self.assertIsNone(self.inspect(ok, block), block)
            self.assertIn("998", self.inspect(long_line, block) or "", block)

    def test_last_line_without_crlf_counts(self) -> None:
        self.assertIsNone(self.inspect(b"x" * LINE_LIMIT))
        self.assertIn("998", self.inspect(b"x" * (LINE_LIMIT + 1)) or "")

    def test_nul_anywhere(self) -> None:
        self.assertIn("NUL", self.inspect(b"abc\r\n" * 10 + b"\x00") or "")
        self.assertIsNone(self.inspect(b""))

    def test_digest_in_the_same_pass(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"hello\r\n")
        from gateway.spool.message_rules import inspect_message_file

        found = inspect_message_file(path, digest=True)
        self.assertEqual(found.digest, "sha256:" + hashlib.sha256(b"hello\r\n").hexdigest())
        self.assertIsNone(found.problem)
