"""
One flush per batch (issue 13): entries are renamed into queue/ or held/ before the flush, under
a marker in tmp/, and start-up recovery quarantines the entries a power loss left incomplete
under a marker (L{gateway.spool.inflight}).  A power loss cannot be had in a test; its result
can: the files as the disk kept them, and the marker beside them.
"""

from __future__ import annotations

import ctypes
import errno
import os

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.spool import fileops, inflight
from gateway.spool.disk import CommitRequest, SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.inflight import INCOMPLETE, INFLIGHT
from gateway.spool.interfaces import SpoolError
from gateway.spool.queueid import new_queue_id
from gateway.spool.store import DirectorySpool
from gateway.testing.spool import RecordingFileOps
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from gateway.workers import spool_sweep

ENVELOPE = Envelope("app@example.com", ("a@example.com",))
PROVENANCE = Provenance(client_address="192.0.2.7", client_name="printer.example", listener="default")
MESSAGE = b"Subject: test\r\nFrom: app@example.com\r\n\r\nHello\r\n"


class SeeingFileOps(RecordingFileOps):
    """What tmp/, queue/ and held/ hold at the moment of each flush."""

    def __init__(self, directory: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.directory = directory
        self.seen: list[dict[str, list[str]]] = []

    def sync_files(self, fds) -> bool:
        self.seen.append({sub: sorted(os.listdir(os.path.join(self.directory, sub)))
                          for sub in ("tmp", "queue", "held")})
        return super().sync_files(fds)


class NoMarkerFileOps(RecordingFileOps):
    """A marker cannot be created (a full inode table, say); everything else works."""

    def open_new(self, path: str) -> int:
        if path.endswith(INFLIGHT):
            raise OSError(28, "No space left on device")
        return super().open_new(path)


class SpoolCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = ImmediateReactor()
        self.clock.advance(1_700_000_000)
        self.directory = os.path.abspath(self.mktemp())

    def spool(self, fileops=None, **kwargs) -> DirectorySpool:
        spool = DirectorySpool(self.directory, SynchronousThreadPool(), self.clock, fileops=fileops, **kwargs)
        self.addCleanup(spool.close)
        return spool

    def accept(self, spool: DirectorySpool):
        self.clock.advance(1)  # ids sort by the time they were minted
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        return self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))

    def listing(self, sub: str) -> list[str]:
        return sorted(os.listdir(os.path.join(self.directory, sub)))


class MarkerTests(SpoolCase):
    def test_entry_is_in_place_under_a_marker_during_its_flush(self):
        ops = SeeingFileOps(self.directory, whole_filesystem=True)
        entry = self.accept(self.spool(fileops=ops))
        seen, = ops.seen
        self.assertEqual(seen["queue"], [entry.queue_id + ".env", entry.queue_id + ".msg"])
        markers = [name for name in seen["tmp"] if name.endswith(INFLIGHT)]
        self.assertEqual(len(markers), 1)
        self.assertTrue(markers[0].endswith(f".{entry.queue_id}{INFLIGHT}"))
        self.assertEqual(self.listing("tmp"), [])  # removed once the flush returned

    def test_held_entries_too(self):
        ops = SeeingFileOps(self.directory, whole_filesystem=True)
        entry = self.accept(self.spool(fileops=ops, hold_new=True))
        seen, = ops.seen
        self.assertEqual(seen["held"], [entry.queue_id + ".env", entry.queue_id + ".msg"])
        self.assertEqual(self.listing("tmp"), [])

    def test_without_a_marker_the_batch_flushes_before_it_renames(self):
        """No marker, no window: the old order, with the directory fsync after the renames."""
        ops = NoMarkerFileOps(whole_filesystem=True)
        entry = self.accept(self.spool(fileops=ops))
        kinds = [op for op, _ in ops.events if op in ("fsync", "rename", "fsync-dir", "syncfs")]
        self.assertEqual(kinds, ["fsync", "fsync", "syncfs", "rename", "rename", "fsync-dir"])
        self.assertEqual(self.listing("queue"), [entry.queue_id + ".env", entry.queue_id + ".msg"])
        self.assertEqual(self.listing("tmp"), [])


class RecoveryTests(SpoolCase):
    """What a power loss in the window can leave, and what the next start-up makes of it."""

    def crashed_spool(self, hold_new: bool = False, count: int = 4):
        """``count`` entries; the second to the fourth were a batch "in flight" under another
        process's marker."""
        spool = self.spool(hold_new=hold_new)
        entries = [self.accept(spool) for _ in range(count)]
        spool.close()
        where = os.path.join(self.directory, "held" if hold_new else "queue")
        self.marker = os.path.join(self.directory, "tmp",
                                   f"deadbeef.{entries[1].queue_id}.{entries[3].queue_id}{INFLIGHT}")
        open(self.marker, "wb").close()
        return entries, where

    def truncate(self, path: str, size: int) -> None:
        with open(path, "r+b") as f:
            f.truncate(size)

    def recover(self):
        spool = self.spool()
        return spool.disk.recover()

    def test_incomplete_entries_under_a_marker_are_quarantined(self):
        entries, queue = self.crashed_spool(count=5)
        old, short, empty_record, whole, later = entries
        self.truncate(os.path.join(queue, old.queue_id + ".msg"), 5)  # before the marker's batch: not looked at
        self.truncate(os.path.join(queue, later.queue_id + ".msg"), 5)  # after it: not looked at either
        self.truncate(os.path.join(queue, short.queue_id + ".msg"), 10)
        self.truncate(os.path.join(queue, empty_record.queue_id + ".env"), 0)
        report = self.recover()
        self.assertEqual(sorted((q.name, q.reason) for q in report.quarantined),
                         sorted([(short.queue_id, INCOMPLETE), (empty_record.queue_id, INCOMPLETE)]))
        self.assertEqual(sorted(queue_id for _, queue_id in report.schedule),
                         sorted([old.queue_id, whole.queue_id, later.queue_id]))
        self.assertEqual(self.listing("quarantine"), sorted(
            f"{e.queue_id}{suffix}" for e in (short, empty_record) for suffix in (".env", ".msg", ".reason")))
        with open(os.path.join(self.directory, "quarantine", short.queue_id + ".reason")) as f:
            self.assertIn(f"reason: {INCOMPLETE}", f.read())
        self.assertEqual(self.listing("tmp"), [])  # the marker is gone with the stale temp files
        self.assertIn("never acknowledged", INCOMPLETE)

    def test_same_size_different_bytes_is_incomplete_too(self):
        """A filesystem that keeps the size but not the bytes (ext4 data=writeback): the digest."""
        entries, queue = self.crashed_spool()
        path = os.path.join(queue, entries[2].queue_id + ".msg")
        with open(path, "r+b") as f:
            f.write(b"\0" * 8)
        report = self.recover()
        self.assertEqual([q.name for q in report.quarantined], [entries[2].queue_id])

    def test_held_entries_are_checked(self):
        entries, held = self.crashed_spool(hold_new=True)
        self.truncate(os.path.join(held, entries[3].queue_id + ".msg"), 0)
        report = self.recover()
        self.assertEqual([q.name for q in report.quarantined], [entries[3].queue_id])
        self.assertEqual(self.listing("held"), sorted(
            f"{e.queue_id}{suffix}" for e in entries[:3] for suffix in (".env", ".msg")))

    def test_whole_entries_under_a_marker_stay_queued(self):
        """A process crash (SIGKILL) in the window: the page cache kept everything."""
        entries, _ = self.crashed_spool()
        report = self.recover()
        self.assertEqual(report.quarantined, [])
        self.assertEqual(sorted(queue_id for _, queue_id in report.schedule), sorted(e.queue_id for e in entries))

    def test_without_a_marker_nothing_is_checked(self):
        """After a clean stop, start-up reads no record: a damaged message is the digest check's
        to find before sending (L{gateway.delivery.graph.integrity})."""
        entries, queue = self.crashed_spool()
        os.unlink(self.marker)
        self.truncate(os.path.join(queue, entries[2].queue_id + ".msg"), 3)
        report = self.recover()
        self.assertEqual(report.quarantined, [])
        self.assertEqual(len(report.schedule), 4)


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class RefusedSyncfs(RecordingFileOps):
    """A kernel (or seccomp filter) that says no to ``syncfs`` once the spool runs."""

    def __init__(self, error: int) -> None:
        super().__init__()

        def refusing(fd: int) -> int:
            ctypes.set_errno(error)
            return -1
        self._syncfs = refusing


class FailingCloseAfterFlush(RecordingFileOps):
    """The first ``close`` after the flush reports EIO (the descriptor is gone all the same)."""

    def __init__(self) -> None:
        super().__init__(whole_filesystem=True)
        self.flushed = self.failed = False

    def sync_files(self, fds) -> bool:
        whole = super().sync_files(fds)
        self.flushed = True
        return whole

    def close(self, fd: int) -> None:
        if self.flushed and not self.failed:
            self.failed = True
            os.close(fd)
            raise OSError(errno.EIO, "Input/output error")
        super().close(fd)


class BatchCase(SynchronousTestCase):
    """Batches straight through L{SpoolDisk.publish_batch}."""

    def disk(self, ops, tag: str = "main0001") -> SpoolDisk:
        self.directory = getattr(self, "directory", None) or os.path.abspath(self.mktemp())
        disk = SpoolDisk(self.directory, ops=ops, tag=tag)
        disk.ensure_directories()
        self.addCleanup(disk.files.close)
        return disk

    def requests(self, count: int, where: str = "queue", start: float = 1_700_000_000.0) -> list[CommitRequest]:
        return [CommitRequest(SpoolEntry(new_queue_id(start + i), ENVELOPE, PROVENANCE, start + i, "", 0), where,
                              data=MESSAGE) for i in range(count)]

    def kinds(self, ops) -> list[str]:
        return [op for op, _ in ops.events if op in ("rename", "fsync", "fsync-dir", "syncfs")]


class BatchTests(BatchCase):
    """Batches of several messages, and the failures that end one commit of a batch."""

    def test_syncfs_refused_mid_run_falls_back_with_the_directory_fsync(self):
        """Refused (ENOSYS, EPERM) after the renames: every file fdatasynced, then queue/ fsynced."""
        for error in (errno.ENOSYS, errno.EPERM):
            self.directory = None
            ops = RefusedSyncfs(error)
            results = self.disk(ops).publish_batch(self.requests(2))
            self.assertTrue(all(isinstance(r, SpoolEntry) for r in results), results)
            self.assertEqual(self.kinds(ops), ["rename"] * 4 + ["fsync"] * 4 + ["fsync-dir"])

    def test_the_marker_names_the_batch_first_and_last_id(self):
        self.directory = os.path.abspath(self.mktemp())
        ops = SeeingFileOps(self.directory, whole_filesystem=True)
        requests = self.requests(3)[::-1]  # latest first
        self.disk(ops).publish_batch(requests)
        seen, = ops.seen
        first, last = min(r.entry.queue_id for r in requests), max(r.entry.queue_id for r in requests)
        self.assertEqual([n for n in seen["tmp"] if n.endswith(INFLIGHT)], [f"main0001.{first}.{last}{INFLIGHT}"])

    def test_drop_offs_in_a_mixed_batch_are_flushed_before_they_are_renamed(self):
        ops = RecordingFileOps(whole_filesystem=True)
        disk = self.disk(ops)
        results = disk.publish_batch(self.requests(1) + self.requests(1, "incoming", start=1_700_000_100.0))
        self.assertTrue(all(isinstance(r, SpoolEntry) for r in results), results)
        incoming = os.path.join(self.directory, "incoming")
        order = [(op, path) for op, path in ops.events if op in ("rename", "syncfs", "fsync-dir")]
        self.assertEqual([op for op, _ in order], ["rename", "rename", "syncfs", "rename", "rename", "fsync-dir"])
        self.assertFalse(order[0][1].startswith(incoming))
        self.assertTrue(order[3][1].startswith(incoming))
        self.assertEqual(order[-1], ("fsync-dir", incoming))

    def test_commits_leave_no_descriptor_open(self):
        disk = self.disk(RecordingFileOps(whole_filesystem=True))
        before = open_descriptors()
        disk.publish_batch(self.requests(3))
        self.assertEqual(open_descriptors() - before, set())

    def test_a_close_error_after_the_flush_fails_that_commit_alone(self):
        disk = self.disk(FailingCloseAfterFlush())
        before = open_descriptors()
        requests = self.requests(3)
        results = disk.publish_batch(requests)
        self.assertIsInstance(results[0], SpoolError)
        self.assertIn("close the message file", str(results[0]))
        self.assertEqual([type(r) for r in results[1:]], [SpoolEntry, SpoolEntry])
        self.assertEqual(open_descriptors() - before, set())
        self.assertEqual(disk.queue_ids(), sorted(r.entry.queue_id for r in requests[1:]))
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])


class KilledInTheWindow(RecordingFileOps):
    """A process SIGKILLed between its renames and its flush: nothing after the renames runs."""

    class Killed(Exception):
        pass

    def sync_files(self, fds) -> bool:
        raise self.Killed()

    def unlink(self, path: str) -> None:
        if path.endswith(INFLIGHT):
            raise OSError(errno.EIO, "killed")
        super().unlink(path)


class FlushRecorder(FileOps):
    """What the intake supervisor's sweep does, and whether its flush works."""

    def __init__(self, events: list, fails: bool = False) -> None:
        self.events, self.fails = events, fails

    def sync_filesystem(self, fd: int) -> None:
        if self.fails:
            raise OSError(errno.EIO, "Input/output error")
        self.events.append("flush")
        super().sync_filesystem(fd)

    def unlink(self, path: str) -> None:
        self.events.append(("unlink", os.path.basename(path)))
        super().unlink(path)


class DeadWorkerTests(BatchCase):
    """A worker killed in its window, then the supervisor's sweep, then perhaps a power loss."""

    def killed_worker(self) -> str:
        requests = self.requests(1)
        try:
            self.disk(KilledInTheWindow(whole_filesystem=True), tag="w1").publish_batch(requests)
        except KilledInTheWindow.Killed:
            pass
        queue_id = requests[0].entry.queue_id
        self.assertIn(f"w1.{queue_id}.{queue_id}{INFLIGHT}", os.listdir(os.path.join(self.directory, "tmp")))
        return queue_id

    def power_loss(self, queue_id: str) -> None:
        with open(os.path.join(self.directory, "queue", queue_id + ".msg"), "r+b") as f:
            f.truncate(0)

    def test_the_sweep_flushes_before_it_removes_the_marker(self):
        queue_id = self.killed_worker()
        events: list = []
        self.patch(spool_sweep, "FileOps", lambda: FlushRecorder(events))
        spool_sweep.remove_temp_files(os.path.join(self.directory, "tmp"), "w1")
        self.assertEqual(events, ["flush", ("unlink", f"w1.{queue_id}.{queue_id}{INFLIGHT}")])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])

    def test_when_that_flush_fails_the_marker_stays_for_the_next_start(self):
        queue_id = self.killed_worker()
        self.patch(spool_sweep, "FileOps", lambda: FlushRecorder([], fails=True))
        spool_sweep.remove_temp_files(os.path.join(self.directory, "tmp"), "w1")
        self.power_loss(queue_id)
        report = self.disk(RecordingFileOps(), tag="main0002").recover()
        self.assertEqual([(q.name, q.reason) for q in report.quarantined], [(queue_id, INCOMPLETE)])

    def test_a_failed_check_leaves_the_marker_for_the_next_start(self):
        queue_id = self.killed_worker()
        self.power_loss(queue_id)
        real, calls = inflight.quarantine_incomplete, []

        def failing_once(*args):
            calls.append(args)
            if len(calls) == 1:
                raise OSError(errno.EIO, "Input/output error")
            return real(*args)
        self.patch(inflight, "quarantine_incomplete", failing_once)
        first = self.disk(RecordingFileOps(), tag="main0002")
        self.assertRaises(SpoolError, first.recover)
        first.release_lock()
        report = self.disk(RecordingFileOps(), tag="main0003").recover()
        self.assertEqual([q.name for q in report.quarantined], [queue_id])
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])


class CommandCommitTests(BatchCase):
    def test_a_commands_commit_is_flushed_before_it_is_renamed_and_leaves_no_marker(self):
        """adopt commits another node's entries, with ids that may be months old: a marker
        named after one would make the next start-up check everything minted since."""
        self.directory = os.path.abspath(self.mktemp())
        ops = SeeingFileOps(self.directory, whole_filesystem=True)
        disk = self.disk(ops)
        entry = SpoolEntry(new_queue_id(1_600_000_000.0), ENVELOPE, PROVENANCE, 1_600_000_000.0, "", 0)
        temp = disk.create_temp(entry.queue_id)
        disk.append(temp, [MESSAGE])
        disk.publish(temp, entry)
        seen, = ops.seen
        self.assertEqual(seen["queue"], [])
        self.assertEqual([n for n in seen["tmp"] if n.endswith(INFLIGHT)], [])
        self.assertEqual(self.kinds(ops), ["fsync", "fsync", "syncfs", "rename", "rename", "fsync-dir"])


class FailingFlush(RecordingFileOps):
    """Everything works but the flush of the whole filesystem that settles markers."""

    def sync_filesystem(self, fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")


class OrderedFlush(RecordingFileOps):
    def sync_filesystem(self, fd: int) -> None:
        self.events.append(("sync_filesystem", ""))
        super().sync_filesystem(fd)


class SettleTests(BatchCase):
    """How markers go: only after a flush that reported no error, and never this process's own."""

    def committed_with_marker(self, tag: str = "aaaa"):
        results = self.disk(RecordingFileOps(whole_filesystem=True)).publish_batch(self.requests(1))
        queue_id = results[0].queue_id
        marker = os.path.join(self.directory, "tmp", f"{tag}.{queue_id}.{queue_id}{INFLIGHT}")
        open(marker, "wb").close()
        return results[0], marker

    def test_recovery_flushes_before_it_removes_a_marker(self):
        _, marker = self.committed_with_marker()
        ops = OrderedFlush()
        self.disk(ops, tag="main0002").recover()
        self.assertEqual([e for e in ops.events if e[0] == "sync_filesystem" or e == ("unlink", marker)],
                         [("sync_filesystem", ""), ("unlink", marker)])

    def test_a_failed_flush_keeps_the_marker_and_says_so(self):
        entry, marker = self.committed_with_marker()
        spool = DirectorySpool(self.directory, SynchronousThreadPool(), ImmediateReactor(), fileops=FailingFlush())
        self.addCleanup(spool.close)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        schedule = self.successResultOf(spool.recover_schedule())
        self.assertEqual([queue_id for _, queue_id in schedule], [entry.queue_id])  # start-up goes on
        self.assertTrue(os.path.exists(marker))
        warnings = [formatEvent(e) for e in events if "markers stay" in formatEvent(e)]
        self.assertEqual(len(warnings), 1)
        self.assertIn(os.path.basename(marker), warnings[0])

    def test_recovery_leaves_this_process_own_marker_alone(self):
        """Intake may already run while recovery does (its first writer waits for nothing)."""
        _, marker = self.committed_with_marker(tag="main0002")
        self.disk(RecordingFileOps(), tag="main0002").recover()
        self.assertTrue(os.path.exists(marker))

    def test_each_markers_batch_is_checked(self):
        results = self.disk(RecordingFileOps(whole_filesystem=True)).publish_batch(self.requests(3))
        tmp = os.path.join(self.directory, "tmp")
        for tag, entry in (("aaaa", results[0]), ("bbbb", results[2])):
            open(os.path.join(tmp, f"{tag}.{entry.queue_id}.{entry.queue_id}{INFLIGHT}"), "wb").close()
        for entry in (results[0], results[1], results[2]):
            with open(entry.message_path, "r+b") as f:
                f.truncate(1)
        report = self.disk(RecordingFileOps(), tag="main0002").recover()
        self.assertEqual(sorted(q.name for q in report.quarantined), sorted([results[0].queue_id, results[2].queue_id]))

    def test_sync_filesystem_raises_what_syncfs_reports(self):
        def failing(fd: int) -> int:
            ctypes.set_errno(errno.EIO)
            return -1
        self.patch(fileops, "_SYNCFS", failing)
        error = self.assertRaises(OSError, FileOps().sync_filesystem, 0)
        self.assertEqual(error.errno, errno.EIO)

    def test_without_syncfs_nothing_counts_as_flushed_and_the_marker_stays(self):
        """``sync`` reports no error: it is no flush to remove a marker after."""
        self.patch(fileops, "_SYNCFS", None)
        self.patch(os, "sync", lambda: self.fail("sync() reports no error; it must not stand in"))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        marker = os.path.join(directory, f"x.{new_queue_id(1.0)}.{new_queue_id(1.0)}{INFLIGHT}")
        open(marker, "wb").close()
        self.assertFalse(inflight.settle(FileOps(), directory, [marker]))
        self.assertTrue(os.path.exists(marker))

    def test_a_close_error_file_by_file_fails_that_commit_alone(self):
        ops = FailingCloseAfterFlush()
        ops.flush_per_file()
        disk = self.disk(ops)
        before = open_descriptors()
        results = disk.publish_batch(self.requests(3))
        self.assertIsInstance(results[0], SpoolError)
        self.assertEqual([type(r) for r in results[1:]], [SpoolEntry, SpoolEntry])
        leaked = {os.readlink(f"/proc/self/fd/{fd}") for fd in open_descriptors() - before
                  if os.path.exists(f"/proc/self/fd/{fd}")}
        self.assertTrue(all(os.path.isdir(path) for path in leaked), leaked)  # the directory syncers' own
