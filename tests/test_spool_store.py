"""
DirectorySpool: durability order, crash recovery, quarantine, disk full, header replacement,
back-pressure.  Thread jobs run inline (SynchronousThreadPool) or under test control
(ManualThreadPool), so every step is deterministic; the files are real.
"""

from __future__ import annotations

import errno
import json
import os
import stat

import attrs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.interfaces import IQueueSpool, ISpool, ISpoolWriter, SpoolError
from gateway.spool.queueid import is_queue_id, new_queue_id
from gateway.spool.record import decode_record, encode_record
from gateway.spool.store import DirectorySpool
from gateway.testing.spool import FailingFileOps, FullDiskFileOps, RecordingFileOps, make_test_spool
from gateway.testing.threads import ImmediateReactor, ManualThreadPool, SynchronousThreadPool

ENVELOPE = Envelope("app@example.com", ("a@example.com", "b@example.com"))
PROVENANCE = Provenance(client_address="192.0.2.7", client_name="printer.example", listener="default",
                        tls=True, auth_identity="scanner")
MESSAGE = b"Subject: test\r\nFrom: app@example.com\r\n\r\nHello\r\n.. dotted\r\n"


class SpoolTestMixin:
    def make_spool(self, fileops=None, pool=None, **kwargs) -> DirectorySpool:
        self.clock = getattr(self, "clock", None) or ImmediateReactor()
        if self.clock.seconds() == 0:
            self.clock.advance(1_700_000_000)
        self.directory = getattr(self, "directory", None) or os.path.abspath(self.mktemp())
        spool = DirectorySpool(self.directory, pool or SynchronousThreadPool(), self.clock,
                               fileops=fileops, **kwargs)
        self.addCleanup(spool.close)
        return spool

    def accept(self, spool, data=MESSAGE, header_section=None, envelope=ENVELOPE):
        writer = self.successResultOf(spool.open_writer())
        writer.write(data)
        return self.successResultOf(writer.commit(envelope, PROVENANCE, header_section=header_section))

    def open_manual(self, spool, pool):
        """open_writer with a ManualThreadPool: the first call creates the directories."""
        d = spool.open_writer()
        pool.run_all()
        return self.successResultOf(d)

    def queue_files(self):
        return sorted(os.listdir(os.path.join(self.directory, "queue")))

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()


class AcceptanceTests(SpoolTestMixin, SynchronousTestCase):
    def test_provides_interfaces(self):
        spool = self.make_spool()
        verifyObject(ISpool, spool)
        verifyObject(IQueueSpool, spool)
        verifyObject(ISpoolWriter, self.successResultOf(spool.open_writer()))

    def test_commit_stores_message_bytes_and_record(self):
        spool = self.make_spool()
        entry = self.accept(spool)
        self.assertTrue(is_queue_id(entry.queue_id))
        self.assertEqual(self.read(entry.message_path), MESSAGE)
        self.assertEqual(entry.size, len(MESSAGE))
        self.assertEqual(entry.received_at, 1_700_000_000)
        self.assertEqual(self.queue_files(), [entry.queue_id + ".env", entry.queue_id + ".msg"])
        record = json.loads(self.read(os.path.join(self.directory, "queue", entry.queue_id + ".env")))
        self.assertEqual(record["recipients"], ["a@example.com", "b@example.com"])
        self.assertEqual(record["client_name"], "printer.example")
        self.assertEqual(record["auth_identity"], "scanner")
        self.assertEqual(self.successResultOf(spool.load(entry.queue_id)), entry)

    def commit_recorded(self, ops):
        """Commit MESSAGE through ``ops``; the entry and the durability-relevant events, in order."""
        pool = ManualThreadPool()
        spool = self.make_spool(fileops=ops, pool=pool)
        writer = self.open_manual(spool, pool)
        writer.write(MESSAGE)
        d = writer.commit(ENVELOPE, PROVENANCE)
        self.assertNoResult(d)
        self.assertEqual(ops.events, [])
        pool.run_all()
        entry = self.successResultOf(d)
        kinds = [(op, path) for op, path in ops.events if op in ("fsync", "rename", "fsync-dir", "syncfs")]
        return entry, kinds

    def test_durability_order_before_commit_fires(self):
        """With a flush of the whole filesystem: rename the message, then the record, then one
        flush of both files that covers the renames too — then, and only then, the commit
        Deferred fires.  No directory fsync: the flush came after the renames."""
        entry, kinds = self.commit_recorded(RecordingFileOps(whole_filesystem=True))
        queue = os.path.join(self.directory, "queue")
        self.assertEqual([op for op, _ in kinds], ["rename", "rename", "fsync", "fsync", "syncfs"])
        self.assertEqual(kinds[0][1], os.path.join(queue, entry.queue_id + ".msg"))
        self.assertEqual(kinds[1][1], os.path.join(queue, entry.queue_id + ".env"))  # the record marks completeness
        self.assertTrue(kinds[2][1].endswith(entry.queue_id + ".msg"))
        self.assertTrue(kinds[3][1].endswith(entry.queue_id + ".env"))

    def test_durability_order_file_by_file(self):
        """Without it (``[spool] flush = "fdatasync"``, older kernels): an fdatasync of each
        file, the renames, then the queue directory's fsync, before the commit fires."""
        entry, kinds = self.commit_recorded(RecordingFileOps(whole_filesystem=False))
        queue = os.path.join(self.directory, "queue")
        self.assertEqual(kinds, [kinds[0], kinds[1],
                                 ("rename", os.path.join(queue, entry.queue_id + ".msg")),
                                 ("rename", os.path.join(queue, entry.queue_id + ".env")),
                                 ("fsync-dir", queue)])
        self.assertEqual([op for op, _ in kinds[:2]], ["fsync", "fsync"])
        self.assertTrue(kinds[0][1].endswith(entry.queue_id + ".msg"))
        self.assertTrue(kinds[1][1].endswith(entry.queue_id + ".env"))

    def test_commit_fires_only_after_directory_fsync(self):
        """Flushing file by file, a failing directory fsync fails the commit and leaves no entry."""
        spool = self.make_spool(fileops=FailingFileOps("sync_dir", errno.EIO).flush_per_file())
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        failure = self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
        self.assertFalse(failure.value.out_of_space)
        self.assertEqual(self.queue_files(), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_commit_fires_only_after_the_flush(self):
        """A failing flush, which came after the renames, fails the commit and leaves no entry."""
        spool = self.make_spool(fileops=FailingFileOps("sync_files", errno.EIO))
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
        self.assertEqual(self.queue_files(), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_disk_full_is_out_of_space_and_leaves_no_entry(self):
        spool = self.make_spool(fileops=FullDiskFileOps(budget=10))
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        failure = self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
        self.assertTrue(failure.value.out_of_space)
        self.assertIn("No space left", str(failure.value))
        self.assertEqual(self.queue_files(), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_quota_exceeded_is_out_of_space(self):
        spool = self.make_spool(fileops=FullDiskFileOps(budget=0, error=errno.EDQUOT))
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        self.assertTrue(self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError).value.out_of_space)

    def test_disk_full_while_streaming_big_message(self):
        """The failure of a background chunk write surfaces at commit, and nothing is queued."""
        spool = self.make_spool(fileops=FullDiskFileOps(budget=100_000), chunk_size=64 * 1024)
        writer = self.successResultOf(spool.open_writer())
        writer.write(b"Subject: big\r\n\r\n")
        for _ in range(10):
            writer.write(b"x" * 64 * 1024)
        failure = self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
        self.assertTrue(failure.value.out_of_space)
        self.assertEqual(self.queue_files(), [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_rename_failure_leaves_no_half_entry(self):
        """The second rename (the record's) fails: the message already renamed is removed."""
        spool = self.make_spool(fileops=FailingFileOps("rename", errno.EIO, after=1))
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
        self.assertEqual(self.queue_files(), [])

    def test_permissions(self):
        spool = self.make_spool()
        entry = self.accept(spool)
        for name in ("tmp", "queue", "incoming", "failed", "quarantine", "archive"):
            mode = stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode)
            self.assertEqual(mode & 0o077, 0, name)
        for path in (entry.message_path, entry.message_path[:-4] + ".env"):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_abort_discards(self):
        spool = self.make_spool(chunk_size=16)
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)  # more than a chunk: a temp file exists
        self.assertNotEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.successResultOf(writer.abort())
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertEqual(self.queue_files(), [])
        self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError)

    def test_flush_exposes_temp_path(self):
        spool = self.make_spool()
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE[:20])
        writer.write(MESSAGE[20:])
        self.successResultOf(writer.flush())
        self.assertEqual(self.read(writer.temp_path), MESSAGE)
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        self.assertEqual(self.read(entry.message_path), MESSAGE)
        self.assertIsNone(writer.temp_path)

    def test_on_commit_notifies_listener(self):
        spool = self.make_spool()
        seen = []
        unsubscribe = spool.on_commit(seen.append)
        entry = self.accept(spool)
        self.assertEqual(seen, [entry])
        unsubscribe()
        self.accept(spool)
        self.assertEqual(len(seen), 1)

    def test_failing_listener_does_not_fail_commit(self):
        spool = self.make_spool()
        spool.on_commit(lambda entry: 1 / 0)
        self.accept(spool)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_queue_ids_unique_and_sortable(self):
        ids = [new_queue_id(1_700_000_000 + i * 0.000001) for i in range(1000)]
        self.assertEqual(len(set(ids)), 1000)
        self.assertEqual(sorted(ids, key=lambda q: q[:11]), ids)
        self.assertTrue(all(is_queue_id(q) for q in ids))
        self.assertFalse(is_queue_id("../../etc/passwd"))


class HeaderSectionTests(SpoolTestMixin, SynchronousTestCase):
    NEW_HEADER = b"Subject: rewritten by policy\r\nX-Policy: yes\r\n\r\n"

    def test_small_message_in_memory(self):
        spool = self.make_spool()
        entry = self.accept(spool, header_section=self.NEW_HEADER)
        self.assertEqual(self.read(entry.message_path), self.NEW_HEADER + b"Hello\r\n.. dotted\r\n")
        self.assertEqual(entry.size, len(self.NEW_HEADER) + len(b"Hello\r\n.. dotted\r\n"))

    def _streamed(self, header_section, chunk_size=8):
        spool = self.make_spool(chunk_size=chunk_size)
        writer = self.successResultOf(spool.open_writer())
        # Byte by byte: the blank line is found across write() boundaries.
        for i in range(len(MESSAGE)):
            writer.write(MESSAGE[i:i + 1])
        self.successResultOf(writer.flush())
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE, header_section=header_section))
        return entry

    def test_streamed_message_different_length(self):
        entry = self._streamed(self.NEW_HEADER)
        self.assertEqual(self.read(entry.message_path), self.NEW_HEADER + b"Hello\r\n.. dotted\r\n")
        self.assertEqual(entry.size, os.path.getsize(entry.message_path))

    def test_streamed_message_same_length(self):
        same = b"Subject: TEST\r\nFrom: app@example.com\r\n\r\n"
        entry = self._streamed(same)
        self.assertEqual(self.read(entry.message_path), same + b"Hello\r\n.. dotted\r\n")

    def test_message_without_blank_line(self):
        spool = self.make_spool()
        entry = self.accept(spool, data=b"Subject: only headers\r\n", header_section=b"Subject: new\r\n\r\n")
        self.assertEqual(self.read(entry.message_path), b"Subject: new\r\n\r\n")


class BackPressureTests(SpoolTestMixin, SynchronousTestCase):
    def test_pause_when_disk_slow_and_resume_when_caught_up(self):
        pool = ManualThreadPool()
        spool = self.make_spool(pool=pool, chunk_size=1000, high_water=4000, low_water=1000)
        writer = self.open_manual(spool, pool)
        calls = []
        writer.set_flow_control(lambda: calls.append("pause"), lambda: calls.append("resume"))
        writer.write(b"Subject: x\r\n\r\n")
        for _ in range(6):
            writer.write(b"y" * 1000)  # first chunk goes to the (stuck) pool, the rest waits
        self.assertEqual(calls, ["pause"])
        self.assertEqual(len(pool.queue), 1)  # one in-flight write per writer
        pool.run_next()  # the disk catches up with the first chunk; the backlog is handed over
        self.assertEqual(calls, ["pause", "resume"])
        pool.run_all()
        d = writer.commit(ENVELOPE, PROVENANCE)
        pool.run_all()
        entry = self.successResultOf(d)
        self.assertEqual(entry.size, len(b"Subject: x\r\n\r\n") + 6000)

    def test_writes_reach_file_in_order(self):
        pool = ManualThreadPool()
        spool = self.make_spool(pool=pool, chunk_size=10, high_water=10**9)
        writer = self.open_manual(spool, pool)
        expected = b"Subject: order\r\n\r\n" + b"".join(b"%05d\r\n" % i for i in range(500))
        for i in range(0, len(expected), 7):
            writer.write(expected[i:i + 7])
            if i % 3 == 0:
                pool.run_all()
        d = writer.commit(ENVELOPE, PROVENANCE)
        pool.run_all()
        self.assertEqual(self.read(self.successResultOf(d).message_path), expected)

    def test_flush_and_commit_without_waiting(self):
        """Calls that overlap (commit before flush finished) still run one job at a time."""
        pool = ManualThreadPool()
        spool = self.make_spool(pool=pool, chunk_size=10, high_water=10**9)
        writer = self.open_manual(spool, pool)
        writer.write(MESSAGE)  # a background write is now in flight
        flushed = writer.flush()
        committed = writer.commit(ENVELOPE, PROVENANCE)
        self.assertEqual(len(pool.queue), 1)
        pool.run_all()
        self.successResultOf(flushed)
        self.assertEqual(self.read(self.successResultOf(committed).message_path), MESSAGE)

    def test_error_resumes_paused_client(self):
        """A paused client must not hang forever when the disk fails; the error comes at commit."""
        pool = ManualThreadPool()
        spool = self.make_spool(pool=pool, fileops=FullDiskFileOps(budget=0), chunk_size=100,
                                high_water=300, low_water=100)
        writer = self.open_manual(spool, pool)
        calls = []
        writer.set_flow_control(lambda: calls.append("pause"), lambda: calls.append("resume"))
        for _ in range(5):
            writer.write(b"z" * 100)
        self.assertEqual(calls, ["pause"])
        pool.run_all()
        self.assertEqual(calls, ["pause", "resume"])
        d = writer.commit(ENVELOPE, PROVENANCE)
        pool.run_all()
        self.assertTrue(self.failureResultOf(d, SpoolError).value.out_of_space)


class RecoveryTests(SpoolTestMixin, SynchronousTestCase):
    def restart(self) -> DirectorySpool:
        self.spool.close()
        self.spool = self.make_spool()
        return self.spool

    def setUp(self):
        self.spool = self.make_spool()
        self.successResultOf(self.spool.recover())

    def test_recover_returns_queued_entries(self):
        a = self.accept(self.spool)
        b = self.accept(self.spool)
        entries = self.successResultOf(self.restart().recover())
        self.assertEqual(sorted(entries, key=lambda e: e.queue_id), sorted([a, b], key=lambda e: e.queue_id))

    def test_recover_schedule_uses_next_attempt_as_hint(self):
        entry = self.accept(self.spool)
        import attrs
        later = attrs.evolve(entry, attempts=1, next_attempt_at=1_700_003_600.0)
        self.successResultOf(self.spool.update(later))
        schedule = self.successResultOf(self.restart().recover_schedule())
        self.assertEqual(schedule, [(1_700_003_600.0, entry.queue_id)])
        self.assertEqual(self.successResultOf(self.spool.load(entry.queue_id)), later)

    def test_crash_leftovers_are_cleaned(self):
        """Simulated crashes at each stage of a commit: temp files, a message renamed without
        its record.  None of them was acknowledged, so none may become an entry."""
        kept = self.accept(self.spool)
        tmp = os.path.join(self.directory, "tmp")
        queue = os.path.join(self.directory, "queue")
        with open(os.path.join(tmp, "deadbeef.0000000000000000000.msg"), "wb") as f:
            f.write(b"half a message")
        with open(os.path.join(tmp, "deadbeef.0000000000000000000.env"), "wb") as f:
            f.write(b"{")
        orphan = new_queue_id(1_700_000_000)
        with open(os.path.join(queue, orphan + ".msg"), "wb") as f:
            f.write(MESSAGE)
        entries = self.successResultOf(self.restart().recover())
        self.assertEqual([e.queue_id for e in entries], [kept.queue_id])
        self.assertEqual(os.listdir(tmp), [])
        self.assertEqual(self.queue_files(), [kept.queue_id + ".env", kept.queue_id + ".msg"])

    def test_corrupt_record_is_quarantined_not_fatal(self):
        good = self.accept(self.spool)
        bad = self.accept(self.spool)
        with open(os.path.join(self.directory, "queue", bad.queue_id + ".env"), "wb") as f:
            f.write(b'{"format": 1, "queue_id": ')
        entries = self.successResultOf(self.restart().recover())
        self.assertEqual([e.queue_id for e in entries], [good.queue_id])
        quarantine = sorted(os.listdir(os.path.join(self.directory, "quarantine")))
        self.assertEqual(quarantine, [bad.queue_id + ".env", bad.queue_id + ".msg"])
        self.assertEqual(self.queue_files(), [good.queue_id + ".env", good.queue_id + ".msg"])

    def test_record_changed_in_place_is_quarantined_on_load(self):
        # Issue 10, integrity: the record's sealed fields carry a digest, so a recipient added to
        # the JSON in place (same format, valid JSON) is refused, never delivered.
        entry = self.accept(self.spool)
        path = os.path.join(self.directory, "queue", entry.queue_id + ".env")
        with open(path, "rb") as f:
            record = json.loads(f.read())
        self.assertTrue(record["record_digest"].startswith("sha256:"))
        record["recipients"].append("outsider@evil.example")
        with open(path, "wb") as f:
            f.write(json.dumps(record).encode())
        self.failureResultOf(self.restart().load(entry.queue_id), KeyError)
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "quarantine"))),
                         [entry.queue_id + ".env", entry.queue_id + ".msg"])

    def test_state_changes_keep_the_record_digest_valid(self):
        entry = self.accept(self.spool)
        later = attrs.evolve(entry, attempts=3, next_attempt_at=entry.received_at + 600,
                             received_at=entry.received_at + 60, draft_id="AAMk=")
        self.successResultOf(self.spool.update(later))
        loaded = self.successResultOf(self.restart().load(entry.queue_id))
        self.assertEqual((loaded.attempts, loaded.draft_id), (3, "AAMk="))

    def test_truncated_message_is_quarantined_on_load(self):
        entry = self.accept(self.spool)
        with open(entry.message_path, "r+b") as f:
            f.truncate(5)
        self.failureResultOf(self.spool.load(entry.queue_id), KeyError)
        self.assertIn(entry.queue_id + ".msg", os.listdir(os.path.join(self.directory, "quarantine")))

    def test_record_without_message_is_quarantined(self):
        entry = self.accept(self.spool)
        os.unlink(entry.message_path)
        schedule = self.successResultOf(self.restart().recover_schedule())
        self.assertEqual(schedule, [])
        self.assertEqual(os.listdir(os.path.join(self.directory, "quarantine")), [entry.queue_id + ".env"])

    def test_stray_file_in_queue_is_quarantined(self):
        with open(os.path.join(self.directory, "queue", "README"), "w") as f:
            f.write("hello")
        self.successResultOf(self.restart().recover())
        self.assertEqual(os.listdir(os.path.join(self.directory, "quarantine")), ["README"])

    def test_interrupted_fail_move_is_completed(self):
        entry = self.accept(self.spool)
        # crash after the message moved to failed/ but before the record followed
        os.rename(entry.message_path, os.path.join(self.directory, "failed", entry.queue_id + ".msg"))
        self.assertEqual(self.successResultOf(self.restart().recover()), [])
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "failed"))),
                         [entry.queue_id + ".env", entry.queue_id + ".msg"])
        self.assertEqual(os.listdir(os.path.join(self.directory, "quarantine")), [])

    def sendmail_drop(self):
        disk = SpoolDisk(self.directory)
        temp = disk.create_temp(new_queue_id(1_700_000_000), incoming=True)
        disk.append(temp, [MESSAGE])
        from gateway.spool.entry import SpoolEntry
        entry = SpoolEntry(temp.queue_id, ENVELOPE, Provenance("127.0.0.1", "localhost", "sendmail"),
                           1_700_000_000.0, "", temp.size)
        return disk.publish(temp, entry, incoming=True)

    def test_sendmail_entries_imported_at_recovery(self):
        dropped = self.sendmail_drop()
        entries = self.successResultOf(self.restart().recover())
        self.assertEqual([e.queue_id for e in entries], [dropped.queue_id])
        self.assertEqual(entries[0].provenance.listener, "sendmail")
        self.assertEqual(os.listdir(os.path.join(self.directory, "incoming")), [])
        self.assertEqual(self.read(entries[0].message_path), MESSAGE)

    def test_interrupted_import_is_completed(self):
        """Crash after the message moved incoming/ → queue/ but before its record followed:
        the message was acknowledged to the sendmail user and must not be deleted as an orphan."""
        dropped = self.sendmail_drop()
        os.rename(dropped.message_path, os.path.join(self.directory, "queue", dropped.queue_id + ".msg"))
        entries = self.successResultOf(self.restart().recover())
        self.assertEqual([e.queue_id for e in entries], [dropped.queue_id])
        self.assertEqual(self.read(entries[0].message_path), MESSAGE)
        self.assertEqual(os.listdir(os.path.join(self.directory, "incoming")), [])

    def test_unreadable_sendmail_record_quarantined(self):
        dropped = self.sendmail_drop()
        with open(dropped.message_path[:-4] + ".env", "wb") as f:
            f.write(b"garbage")
        self.assertEqual(self.successResultOf(self.restart().recover()), [])
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "quarantine"))),
                         [dropped.queue_id + ".env", dropped.queue_id + ".msg"])

    def test_live_writer_survives_recovery(self):
        """Intake may start before recovery finishes; recovery must not delete its temp file."""
        writer = self.successResultOf(self.spool.open_writer())
        writer.write(MESSAGE)
        self.successResultOf(writer.flush())
        self.spool.close()
        self.successResultOf(self.spool.recover())
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        self.assertEqual(self.read(entry.message_path), MESSAGE)

    def test_second_daemon_is_refused(self):
        other = DirectorySpool(self.directory, SynchronousThreadPool(), self.clock)
        other.disk.lock_wait = 0
        failure = self.failureResultOf(other.recover(), SpoolError)
        self.assertIn("in use by another graphsmtp process", str(failure.value))


class StateChangeTests(SpoolTestMixin, SynchronousTestCase):
    def test_update_is_atomic_replace(self):
        import attrs
        ops = RecordingFileOps()
        spool = self.make_spool(fileops=ops)
        entry = self.accept(spool)
        del ops.events[:]
        newer = attrs.evolve(entry, attempts=3, next_attempt_at=1_700_000_900.0)
        self.successResultOf(spool.update(newer))
        env = os.path.join(self.directory, "queue", entry.queue_id + ".env")
        self.assertEqual(decode_record(self.read(env), entry.message_path), newer)
        self.assertEqual(os.stat(env).st_mtime, 1_700_000_900.0)
        self.assertEqual([op for op, _ in ops.events if op in ("fsync", "rename", "fsync-dir")],
                         ["fsync", "rename", "fsync-dir"])
        self.assertEqual(ops.events[-2], ("rename", env))

    def test_remove_and_archive(self):
        spool = self.make_spool()
        entry = self.accept(spool)
        self.successResultOf(spool.remove(entry))
        self.assertEqual(self.queue_files(), [])
        spool.close()  # one spool owner at a time (the lock), as two daemons would be
        archiving = DirectorySpool(self.directory, SynchronousThreadPool(), self.clock, archive_delivered=True)
        self.addCleanup(archiving.close)
        entry = self.accept(archiving)
        self.successResultOf(archiving.remove(entry))
        self.assertEqual(self.queue_files(), [])
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "archive"))),
                         [entry.queue_id + ".env", entry.queue_id + ".msg"])

    def test_fail_keeps_reason_beside_message(self):
        spool = self.make_spool()
        entry = self.accept(spool)
        failed = self.successResultOf(spool.fail(entry, "5.1.1 mailbox not found (ErrorInvalidRecipients)"))
        self.assertEqual(self.queue_files(), [])
        fdir = os.path.join(self.directory, "failed")
        self.assertEqual(sorted(os.listdir(fdir)), [entry.queue_id + s for s in (".env", ".msg", ".reason")])
        self.assertEqual(self.read(failed.message_path), MESSAGE)
        self.assertIn(b"reason: 5.1.1 mailbox not found (ErrorInvalidRecipients)",
                      self.read(os.path.join(fdir, entry.queue_id + ".reason")))
        self.assertEqual(SpoolDisk(self.directory).failure_reason(entry.queue_id),
                         "5.1.1 mailbox not found (ErrorInvalidRecipients)")

    def test_requeue_from_failed(self):
        spool = self.make_spool()
        entry = self.accept(spool)
        self.successResultOf(spool.fail(entry, "boom"))
        self.clock.advance(100)
        again = self.successResultOf(spool.requeue(entry.queue_id))
        self.assertEqual(again.received_at, 1_700_000_100)
        self.assertEqual(again.attempts, 0)
        self.assertIn("requeued by admin", again.history[-1].reason)
        self.assertEqual(self.queue_files(), [entry.queue_id + ".env", entry.queue_id + ".msg"])
        self.assertEqual(os.listdir(os.path.join(self.directory, "failed")), [])
        self.assertEqual(self.successResultOf(spool.load(entry.queue_id)), again)


class RecordDecisionFieldsTests(SynchronousTestCase):
    """The intake decision, digest and draft id survive a record round trip; old records read as None."""

    def test_round_trip_and_old_records(self) -> None:
        entry = SpoolEntry(
            queue_id="0SJ5Q4ZP1A2B3C4D5E6", envelope=Envelope("a@example.com", ("b@example.com",)),
            provenance=Provenance("192.0.2.1", "h", "smtp"), received_at=1.0, message_path="/m", size=3,
            sending_mailbox="a@example.com", message_digest="sha256:00", draft_id="AAMk=")
        back = decode_record(encode_record(entry), "/m")
        self.assertEqual((back.sending_mailbox, back.message_digest, back.draft_id),
                         ("a@example.com", "sha256:00", "AAMk="))
        old = json.loads(encode_record(entry))
        for key in ("sending_mailbox", "message_digest", "draft_id", "record_digest"):
            del old[key]
        back = decode_record(json.dumps(old).encode(), "/m")
        self.assertEqual((back.sending_mailbox, back.message_digest, back.draft_id), (None, None, None))


# a second gateway pointed at a spool another graphsmtp process owns.  Its queue runner
# refuses to start (the spool lock is taken), so whatever its SMTP listeners accepted would be
# acknowledged with 250 and then sit in the queue undelivered until the *other* process
# restarts.  Intake must refuse (a transient SpoolError, so 451) instead of committing.
class IntakeNeedsTheSpoolLockTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.owner = SpoolDisk(self.directory)  # the other daemon (flock is per open file)
        self.owner.ensure_directories()
        self.owner.acquire_lock()
        self.addCleanup(self.owner.release_lock)

    def test_commit_refused_while_another_process_owns_the_spool(self):
        spool = make_test_spool(self.directory)
        spool.disk.lock_wait = 0
        self.addCleanup(spool.close)
        d = spool.open_writer()

        def commit(writer):
            writer.write(b"Subject: s\r\n\r\nbody\r\n")
            return writer.commit(Envelope("s@example.com", ("r@example.com",)),
                                 Provenance(client_address="192.0.2.1", client_name="c", listener="l"))
        d.addCallback(commit)
        failure = self.failureResultOf(d, SpoolError)
        self.assertIn("in use by another graphsmtp process", str(failure.value))
        self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [])

    def test_intake_works_once_the_lock_is_free(self):
        self.owner.release_lock()
        spool = make_test_spool(self.directory)
        self.addCleanup(spool.close)
        writer = self.successResultOf(spool.open_writer())
        writer.write(b"Subject: s\r\n\r\nbody\r\n")
        entry = self.successResultOf(writer.commit(
            Envelope("s@example.com", ("r@example.com",)),
            Provenance(client_address="192.0.2.1", client_name="c", listener="l")))
        self.assertTrue(os.path.exists(entry.message_path))
        # The same process's recovery still gets the lock it already holds.
        self.assertEqual([q for _, q in self.successResultOf(spool.recover_schedule())], [entry.queue_id])
