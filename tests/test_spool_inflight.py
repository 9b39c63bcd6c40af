"""
One flush per batch (issue 13): entries are renamed into queue/ or held/ before the flush, under
a marker in tmp/, and start-up recovery quarantines the entries a power loss left incomplete
under a marker (L{gateway.spool.inflight}).  A power loss cannot be had in a test; its result
can: the files as the disk kept them, and the marker beside them.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.spool.entry import Envelope, Provenance
from gateway.spool.inflight import INCOMPLETE, INFLIGHT
from gateway.spool.store import DirectorySpool
from gateway.testing.spool import RecordingFileOps
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool

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

    def crashed_spool(self, hold_new: bool = False):
        """Four entries; the last three were "in flight" under another process's marker."""
        spool = self.spool(hold_new=hold_new)
        entries = [self.accept(spool) for _ in range(4)]
        spool.close()
        where = os.path.join(self.directory, "held" if hold_new else "queue")
        open(os.path.join(self.directory, "tmp", f"deadbeef.{entries[1].queue_id}{INFLIGHT}"), "wb").close()
        return entries, where

    def truncate(self, path: str, size: int) -> None:
        with open(path, "r+b") as f:
            f.truncate(size)

    def recover(self):
        spool = self.spool()
        return spool.disk.recover()

    def test_incomplete_entries_under_a_marker_are_quarantined(self):
        entries, queue = self.crashed_spool()
        old, short, empty_record, whole = entries
        self.truncate(os.path.join(queue, old.queue_id + ".msg"), 5)  # before the marker: not looked at
        self.truncate(os.path.join(queue, short.queue_id + ".msg"), 10)
        self.truncate(os.path.join(queue, empty_record.queue_id + ".env"), 0)
        report = self.recover()
        self.assertEqual(sorted((q.name, q.reason) for q in report.quarantined),
                         sorted([(short.queue_id, INCOMPLETE), (empty_record.queue_id, INCOMPLETE)]))
        self.assertEqual(sorted(queue_id for _, queue_id in report.schedule), sorted([old.queue_id, whole.queue_id]))
        self.assertEqual(self.listing("quarantine"), sorted(
            f"{e.queue_id}{suffix}" for e in (short, empty_record) for suffix in (".env", ".msg")))
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
        os.unlink(os.path.join(self.directory, "tmp", f"deadbeef.{entries[1].queue_id}{INFLIGHT}"))
        self.truncate(os.path.join(queue, entries[2].queue_id + ".msg"), 3)
        report = self.recover()
        self.assertEqual(report.quarantined, [])
        self.assertEqual(len(report.schedule), 4)
