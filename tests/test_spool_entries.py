"""
Reading a queued record (L{gateway.spool.entries.StoredEntries}): ``load`` and ``set_draft``
read it through one helper, and each answers a record that does not decode its own way.
"""

from __future__ import annotations

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.spool.disk import CommitRequest, SpoolDisk
from gateway.spool.entries import EntryMissing, EntryQuarantined
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.interfaces import SpoolError
from gateway.spool.layout import ENV, SpoolLayout
from gateway.spool.queueid import new_queue_id
from gateway.testing.spool import FailingFileOps

ENVELOPE = Envelope("app@corp.example", ("alice@corp.example",))
PROVENANCE = Provenance("192.0.2.7", "printer.example", "smtp")
DATA = b"Subject: s\r\n\r\nbody\r\n"


def queued_spool(case: SynchronousTestCase) -> tuple[SpoolDisk, str]:
    """A spool with one accepted entry in queue/."""
    disk = SpoolDisk(os.path.abspath(case.mktemp()))
    disk.ensure_directories()
    queue_id = new_queue_id(1.0e9)
    [result] = disk.publish_batch([CommitRequest(SpoolEntry(queue_id, ENVELOPE, PROVENANCE, 1.0, "", 0), data=DATA)])
    case.assertIsInstance(result, SpoolEntry)
    return disk, queue_id


class ReadRecordTests(SynchronousTestCase):
    def test_set_draft_rewrites_the_record_read_from_disk(self) -> None:
        disk, queue_id = queued_spool(self)
        disk.set_draft(queue_id, "draft-1")
        self.assertEqual(disk.load(queue_id).draft_id, "draft-1")

    def test_missing_record_is_entry_missing_for_both(self) -> None:
        disk, queue_id = queued_spool(self)
        os.unlink(SpoolLayout.path(disk.layout.queue, queue_id, ENV))
        self.assertRaises(EntryMissing, disk.load, queue_id)
        self.assertRaises(EntryMissing, disk.set_draft, queue_id, "draft-1")

    def test_unreadable_record_file_is_a_spool_error_for_both(self) -> None:
        disk, queue_id = queued_spool(self)
        disk.ops = FailingFileOps("read_file", errno.EIO)
        for call in (lambda: disk.load(queue_id), lambda: disk.set_draft(queue_id, "draft-1")):
            error = self.assertRaises(SpoolError, call)
            self.assertIn(f"read the record of {queue_id}", str(error))
        self.assertEqual(disk.queue_ids(), [queue_id])

    def test_undecodable_record_quarantines_on_load_but_only_refuses_set_draft(self) -> None:
        disk, queue_id = queued_spool(self)
        with open(SpoolLayout.path(disk.layout.queue, queue_id, ENV), "wb") as f:
            f.write(b"not a record\n")
        error = self.assertRaises(SpoolError, disk.set_draft, queue_id, "draft-1")
        self.assertIn(f"could not update the record of {queue_id}", str(error))
        self.assertEqual(disk.queue_ids(), [queue_id])  # set_draft leaves it where it is
        self.assertRaises(EntryQuarantined, disk.load, queue_id)
        self.assertEqual(disk.queue_ids(), [])


class ReasonFileTests(SynchronousTestCase):
    """
    failed/ and quarantine/ write their ``.reason`` through one writer
    (L{gateway.spool.layout.SpoolFiles.write_temp_reason}); only failed/'s is fsynced.
    """

    def test_writer_returns_a_temp_file_with_the_text(self) -> None:
        disk, queue_id = queued_spool(self)
        path = disk.files.write_temp_reason(queue_id, "reason: caf\u00e9\n", durable=True)
        self.assertEqual(os.path.dirname(path), disk.layout.tmp)
        self.assertTrue(path.endswith(".reason"), path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), "reason: caf\u00e9\n".encode("utf-8"))

    def test_durable_writer_fsyncs_and_leaves_nothing_when_that_fails(self) -> None:
        disk, queue_id = queued_spool(self)
        disk.ops = FailingFileOps("sync_file", errno.EIO)
        self.assertRaises(OSError, disk.files.write_temp_reason, queue_id, "text\n", True)
        self.assertEqual(os.listdir(disk.layout.tmp), [])
        disk.files.write_temp_reason(queue_id, "text\n", False)  # no fsync asked, none made

    def test_fail_keeps_the_entry_queued_when_its_reason_cannot_be_made_durable(self) -> None:
        disk, queue_id = queued_spool(self)
        entry = disk.load(queue_id)
        disk.ops = FailingFileOps("sync_file", errno.EIO)
        error = self.assertRaises(SpoolError, disk.fail, entry, "bounced")
        self.assertIn(f"move {queue_id} to failed/", str(error))
        self.assertEqual((disk.queue_ids(), os.listdir(disk.layout.tmp)), ([queue_id], []))
        self.assertEqual(os.listdir(disk.layout.failed), [])

    def test_fail_writes_the_reason_beside_the_failed_entry(self) -> None:
        disk, queue_id = queued_spool(self)
        disk.fail(disk.load(queue_id), "mailbox\nunknown")
        self.assertEqual(disk.failure_reason(queue_id), "mailbox unknown")
        self.assertEqual(os.listdir(disk.layout.tmp), [])

    def test_quarantine_reason_is_a_courtesy_written_without_fsync(self) -> None:
        disk, queue_id = queued_spool(self)
        entry = disk.load(queue_id)
        disk.ops = FailingFileOps("sync_file", errno.EIO)
        disk.quarantine(entry, "digest\nmismatch")
        with open(os.path.join(disk.layout.quarantine, queue_id + ".reason"), encoding="utf-8") as f:
            self.assertIn("reason: digest mismatch\n", f.read())
        self.assertEqual((disk.queue_ids(), os.listdir(disk.layout.tmp)), ([], []))

    def test_quarantine_still_takes_the_entry_out_when_no_reason_can_be_written(self) -> None:
        disk, queue_id = queued_spool(self)
        entry = disk.load(queue_id)
        disk.ops = FailingFileOps("write", errno.ENOSPC)
        disk.quarantine(entry, "digest mismatch")
        self.assertEqual(disk.queue_ids(), [])
        self.assertNotIn(queue_id + ".reason", os.listdir(disk.layout.quarantine))
        self.assertEqual(os.listdir(disk.layout.tmp), [])


class TempFileTests(SynchronousTestCase):
    """Records and reasons share one temp-file writer (L{gateway.spool.layout.SpoolFiles.write_temp_file})."""

    def test_mtime_is_set_when_asked_and_left_alone_otherwise(self) -> None:
        disk, queue_id = queued_spool(self)
        hinted = disk.files.write_temp_file(queue_id, ".env", b"x", durable=True, mtime=1234567.0)
        plain = disk.files.write_temp_file(queue_id, ".env", b"y", durable=True)
        self.assertNotEqual(hinted, plain)
        self.assertEqual(os.stat(hinted).st_mtime, 1234567.0)
        self.assertGreater(os.stat(plain).st_mtime, 1234567.0)

    def test_a_failed_write_leaves_nothing_in_tmp(self) -> None:
        disk, queue_id = queued_spool(self)
        disk.ops = FailingFileOps("write", errno.ENOSPC)
        self.assertRaises(OSError, disk.files.write_temp_file, queue_id, ".env", b"x", True)
        self.assertEqual(os.listdir(disk.layout.tmp), [])
