"""
The intake journal (issue 13, L{gateway.spool.journal}): a batch of the commit process made
durable by one fdatasync of a preallocated journal, retired by a later flush of the
filesystem, and read at start-up after another boot.  A power loss cannot be had in a test;
its result can: the files as the disk kept them, the journal beside them, and another boot id.
"""

from __future__ import annotations

import errno
import os
import select
import time

from twisted.trial.unittest import SynchronousTestCase

from gateway.spool import commit_process, inflight
from gateway.spool import journal as journal_module
from gateway.spool.commit_wire import encode_batch
from gateway.spool.disk import CommitRequest, SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.journal import (
    DATA_START,
    JOURNAL,
    RETIRE_AFTER,
    IntakeJournal,
    JournalEntry,
    JournalError,
    boot_id,
    journal_path,
    read_journal,
)
from gateway.spool.layout import ENV, MSG, SpoolFiles
from gateway.spool.queueid import new_queue_id
from gateway.spool.record import decode_record, file_digest
from gateway.testing.spool import RecordingFileOps
from gateway.workers import spool_sweep

ENVELOPE = Envelope("app@example.com", ("a@example.com",))
PROVENANCE = Provenance(client_address="192.0.2.7", client_name="printer.example", listener="default")
MESSAGE = b"Subject: test\r\nFrom: app@example.com\r\n\r\n" + b"x" * 10_000 + b"\r\n"
BOOT = "0" * 8 + "-1111-2222-3333-" + "4" * 12
OTHER_BOOT = "9" * 8 + "-1111-2222-3333-" + "4" * 12
SMALL = 64 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class JournalFileTests(SynchronousTestCase):
    """The journal file: frames, generations, the two header slots, retirement."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.ops = RecordingFileOps(whole_filesystem=True)
        self.files = SpoolFiles(self.directory, self.ops, "t1", time.time)
        self.files.ensure_directories()
        self.addCleanup(self.files.close)
        self.path = os.path.join(self.directory, "tmp", "t1.1" + JOURNAL)
        self.clock = Clock()

    def journal(self, size: int = SMALL) -> IntakeJournal:
        return IntakeJournal(self.ops, self.path, BOOT, size=size, clock=self.clock)

    def entries(self, *ids: str) -> list[JournalEntry]:
        return [JournalEntry(queue_id, "held" if n % 2 else "queue", b'{"record": %d}' % n, MESSAGE + bytes([n]))
                for n, queue_id in enumerate(ids)]

    def test_what_is_appended_is_read_back(self):
        journal = self.journal()
        first, second = self.entries("A1", "A2"), self.entries("A3")
        journal.append(first)
        journal.append(second)
        contents = read_journal(self.path)
        self.assertEqual((contents.generation, contents.boot), (1, BOOT))
        self.assertEqual(list(contents.entries), first + second)

    def test_one_write_and_one_data_flush_per_batch(self):
        journal = self.journal()
        del self.ops.events[:]
        journal.append(self.entries("A1", "A2", "A3"))
        self.assertEqual(self.ops.events, [("pwrite", self.path), ("fsync", self.path)])

    def test_a_torn_or_stale_tail_ends_the_journal(self):
        """A frame cut short by a power loss (never acknowledged) and whatever follows it are not read."""
        journal = self.journal()
        journal.append(self.entries("A1"))
        end = DATA_START + len(journal_module.encode_frames(1, self.entries("A1")))
        journal.append(self.entries("A2"))
        with open(self.path, "r+b") as f:
            f.seek(end + 20)
            f.write(b"\xff")  # inside the second frame's body
        self.assertEqual([e.queue_id for e in read_journal(self.path).entries], ["A1"])

    def test_retirement_flushes_the_filesystem_and_ends_the_generation(self):
        journal = self.journal()
        journal.append(self.entries("A1", "A2"))
        del self.ops.events[:]
        journal.retire()
        self.assertEqual(self.ops.events[0], ("syncfs", ""))
        contents = read_journal(self.path)
        self.assertEqual((contents.generation, contents.entries), (2, ()))
        journal.append(self.entries("A3"))
        self.assertEqual([e.queue_id for e in read_journal(self.path).entries], ["A3"])

    def test_a_torn_header_leaves_the_other_slot(self):
        """The header of generation 2 goes to the other slot: if its write is torn, generation 1 counts."""
        journal = self.journal()
        journal.append(self.entries("A1"))
        journal.retire()
        with open(self.path, "r+b") as f:
            f.write(b"\0" * 16)  # slot 0: generation 2's header
        self.assertEqual(read_journal(self.path).generation, 1)
        with open(self.path, "r+b") as f:
            f.seek(512)
            f.write(b"\0" * 16)
        self.assertRaises(JournalError, read_journal, self.path)

    def test_retirement_is_due_a_while_after_the_first_unretired_batch(self):
        journal = self.journal()
        self.assertIsNone(journal.retire_in())
        journal.append(self.entries("A1"))
        self.assertAlmostEqual(journal.retire_in(), RETIRE_AFTER)
        self.clock.now += RETIRE_AFTER / 2
        journal.append(self.entries("A2"))  # does not move the deadline
        self.assertAlmostEqual(journal.retire_in(), RETIRE_AFTER / 2)
        self.clock.now += RETIRE_AFTER
        self.assertEqual(journal.retire_in(), 0)
        journal.retire()
        self.assertIsNone(journal.retire_in())

    def flushes_failing(self, times: int) -> list:
        """The next ``times`` flushes of the filesystem fail with EIO; the list records every flush."""
        flushes = []
        real = self.ops.sync_filesystem

        def flaky(fd):
            flushes.append(len(flushes) < times)
            if flushes[-1]:
                raise OSError(errno.EIO, "Input/output error")
            real(fd)

        self.patch(self.ops, "sync_filesystem", flaky)
        return flushes

    def test_a_failed_retirement_stops_the_journal_which_stays_for_start_up(self):
        """The kernel reports a failed write once and leaves its pages clean in memory, so no
        later flush can vouch for them: the generation is never retired, the journal takes no
        more batches, and closing it leaves it for start-up (which writes the files again)."""
        journal = self.journal()
        journal.append(self.entries("A1"))
        self.clock.now += RETIRE_AFTER
        flushes = self.flushes_failing(1)
        self.assertRaises(OSError, journal.retire)
        self.assertFalse(journal.usable)
        self.assertIsNone(journal.retire_in())  # no retry loop
        self.assertFalse(journal.fits(self.entries("A2")))
        journal.retire()  # a later call does nothing
        journal.close()
        self.assertEqual(flushes, [True])
        contents = read_journal(self.path)
        self.assertEqual((contents.generation, [e.queue_id for e in contents.entries]), (1, ["A1"]))

    def test_a_header_that_cannot_be_written_stops_the_journal_without_a_retry_loop(self):
        journal = self.journal()
        journal.append(self.entries("A1"))
        real = self.ops.pwrite

        def failing_header(fd, data, offset):
            if offset < DATA_START:
                raise OSError(errno.EIO, "Input/output error")
            real(fd, data, offset)

        self.patch(self.ops, "pwrite", failing_header)
        self.assertRaises(OSError, journal.retire)
        self.assertEqual(journal.generation, 1)  # what the disk still says
        self.assertIsNone(journal.retire_in())
        self.assertFalse(journal.usable)

    def test_a_failed_append_stops_the_journal(self):
        """A batch whose flush failed goes the other way (a flush of the filesystem, or 451); a
        frame written after its frames could not be read back past them, so none is."""
        journal = self.journal()
        journal.append(self.entries("A1"))

        def failing_flush(fd):
            raise OSError(errno.EIO, "Input/output error")

        real = self.ops.sync_file
        self.patch(self.ops, "sync_file", failing_flush)
        self.assertRaises(OSError, journal.append, self.entries("B1", "B2"))
        self.patch(self.ops, "sync_file", real)
        self.assertFalse(journal.fits(self.entries("C1")))
        journal.close()
        self.assertEqual([e.queue_id for e in read_journal(self.path).entries][:1], ["A1"])  # kept for start-up

    def test_a_full_journal_is_retired_before_the_batch(self):
        journal = self.journal(size=DATA_START + 3 * len(journal_module.encode_frames(1, self.entries("A1"))))
        for queue_id in ("A1", "A2", "A3"):
            journal.append(self.entries(queue_id))
        del self.ops.events[:]
        journal.append(self.entries("A4"))
        self.assertEqual(self.ops.events[0], ("syncfs", ""))
        self.assertEqual([e.queue_id for e in read_journal(self.path).entries], ["A4"])

    def test_a_batch_larger_than_the_journal_does_not_fit(self):
        journal = self.journal(size=DATA_START + 1000)
        self.assertFalse(journal.fits(self.entries("A1")))

    def test_closing_retires_and_removes_it(self):
        journal = self.journal()
        journal.append(self.entries("A1"))
        del self.ops.events[:]
        journal.close()
        self.assertEqual([kind for kind, _ in self.ops.events][0], "syncfs")
        self.assertFalse(os.path.exists(self.path))

    def test_its_name_is_made_durable_before_its_first_batch(self):
        self.journal()
        self.assertIn(("fsync-dir", os.path.dirname(self.path)), self.ops.events)

    def test_the_space_is_written_when_it_is_made(self):
        """Zero-filled, not fallocated: a later write into it changes no metadata."""
        self.journal()
        self.assertEqual(os.stat(self.path).st_size, SMALL)
        self.assertGreaterEqual(os.stat(self.path).st_blocks * 512, SMALL)

    def test_this_boot_has_an_id(self):
        self.assertEqual(len(boot_id() or ""), 36)


class BatchCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())

    def disk(self, ops: FileOps, tag: str = "main0001") -> SpoolDisk:
        disk = SpoolDisk(self.directory, ops=ops, tag=tag)
        disk.ensure_directories()
        self.addCleanup(disk.files.close)
        return disk

    def journal(self, disk: SpoolDisk, pid: int = 4242) -> IntakeJournal:
        return IntakeJournal(disk.files.ops, journal_path(disk.layout.tmp, disk.files.tag, pid), BOOT, size=SMALL * 4)

    def requests(self, count: int, where: str = "queue", start: float = 1_700_000_000.0) -> list[CommitRequest]:
        return [CommitRequest(SpoolEntry(new_queue_id(start + i), ENVELOPE, PROVENANCE, start + i, "", 0), where,
                              data=MESSAGE) for i in range(count)]

    def listing(self, sub: str) -> list[str]:
        return sorted(os.listdir(os.path.join(self.directory, sub)))


class JournaledBatchTests(BatchCase):
    """L{Acceptor.publish_batch} with the commit process's journal."""

    def test_a_batch_is_made_durable_by_the_journal_alone_then_renamed_into_place(self):
        ops = RecordingFileOps(whole_filesystem=True)
        disk = self.disk(ops)
        journal = self.journal(disk)
        del ops.events[:]
        requests = self.requests(2) + self.requests(1, "held", start=1_700_000_100.0)
        results = disk.acceptor.publish_batch(requests, journal=journal)
        self.assertEqual([r.queue_id for r in results], [r.entry.queue_id for r in requests])
        kinds = [kind for kind, path in ops.events if kind in ("rename", "fsync", "syncfs", "pwrite")]
        self.assertEqual(kinds, ["pwrite", "fsync"] + ["rename"] * 6)  # durable before in place; no syncfs
        self.assertFalse([name for name in self.listing("tmp") if name.endswith(".inflight")])
        kept = read_journal(journal.path).entries
        self.assertEqual([(e.queue_id, e.where, e.message) for e in kept],
                         [(r.entry.queue_id, r.where, MESSAGE) for r in requests])
        for entry, result in zip(kept, results, strict=True):
            where = os.path.dirname(result.message_path)
            with open(os.path.join(where, entry.queue_id + ENV), "rb") as f:
                self.assertEqual(f.read(), entry.record)  # the record as written, hold note included

    def test_if_the_journal_cannot_be_written_the_filesystem_is_flushed_instead(self):
        ops = RecordingFileOps(whole_filesystem=True)
        disk = self.disk(ops)
        journal = self.journal(disk)

        def broken(entries):
            raise OSError(errno.EIO, "Input/output error")

        self.patch(journal, "append", broken)
        results = disk.acceptor.publish_batch(self.requests(2), journal=journal)
        self.assertTrue(all(isinstance(r, SpoolEntry) for r in results))
        self.assertIn(("syncfs", ""), ops.events)
        self.assertTrue(any(path.endswith(".inflight") for kind, path in ops.events if kind == "open"))

    def test_a_message_in_a_temp_file_is_not_journaled(self):
        ops = RecordingFileOps(whole_filesystem=True)
        disk = self.disk(ops)
        journal = self.journal(disk)
        (request,) = self.requests(1)
        temp = disk.acceptor.create_temp(request.entry.queue_id)
        disk.acceptor.append(temp, [MESSAGE])
        request = CommitRequest(request.entry, "queue", temp=temp)
        disk.acceptor.publish_batch([request], journal=journal)
        self.assertEqual(read_journal(journal.path).entries, ())
        self.assertIn(("syncfs", ""), ops.events)


class ReplayTests(BatchCase):
    """Start-up recovery reads the journals other processes left."""

    def committed(self, count: int = 4, start: float = 1_700_000_000.0):
        """A dead child's leftovers: ``count`` entries (the last held) and its journal, still open."""
        disk = self.disk(RecordingFileOps(whole_filesystem=True), tag="dead0001")
        journal = self.journal(disk, pid=int(start))
        self.addCleanup(os.close, journal._fd)
        results = disk.acceptor.publish_batch(self.requests(count - 1, start=start) + self.requests(1, "held", start + 100),
                                              journal=journal)
        return journal.path, results

    def recover(self, boot: str):
        self.patch(journal_module, "boot_id", lambda: boot)
        import gateway.spool.recovery as recovery_module
        self.patch(recovery_module, "boot_id", lambda: boot)
        self.recovery_ops = RecordingFileOps(whole_filesystem=True)
        return self.disk(self.recovery_ops, tag="next0001").recover()

    def test_after_another_boot_what_the_disk_lost_is_written_again(self):
        path, (lost, torn, moved_on, held) = self.committed()
        os.unlink(lost.message_path[:-len(MSG)] + ENV)
        os.unlink(lost.message_path)
        with open(torn.message_path, "r+b") as f:
            f.truncate(100)  # its data never reached the disk
        os.unlink(held.message_path)
        os.unlink(held.message_path[:-len(MSG)] + ENV)
        failed = os.path.join(self.directory, "failed")
        for suffix in (MSG, ENV):  # failed since: renamed, its message's data flushed only by the retirement
            os.rename(os.path.join(self.directory, "queue", moved_on.queue_id + suffix),
                      os.path.join(failed, moved_on.queue_id + suffix))
        with open(os.path.join(failed, moved_on.queue_id + MSG), "r+b") as f:
            f.truncate(0)
        report = self.recover(OTHER_BOOT)
        self.assertEqual(sorted(report.restored), sorted(e.queue_id for e in (lost, torn, moved_on, held)))
        for entry in (lost, torn, held):
            with open(entry.message_path[:-len(MSG)] + ENV, "rb") as f:
                self.assertEqual(decode_record(f.read(), entry.message_path, entry.queue_id), entry)
            self.assertEqual(file_digest(entry.message_path), entry.message_digest)
        self.assertNotIn(moved_on.queue_id + MSG, self.listing("queue"))  # mended where it is, not brought back
        with open(os.path.join(failed, moved_on.queue_id + MSG), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertIn(held.queue_id + ENV, self.listing("held"))
        self.assertEqual(self.listing("tmp"), [])  # the journal is gone once its work is flushed
        scheduled = {queue_id for _, queue_id in report.schedule}
        self.assertLessEqual({lost.queue_id, torn.queue_id}, scheduled)

    def test_a_record_the_disk_lost_is_written_again(self):
        path, (entry, *_rest) = self.committed()
        record = entry.message_path[:-len(MSG)] + ENV
        with open(record, "r+b") as f:
            f.truncate(0)
        report = self.recover(OTHER_BOOT)
        self.assertEqual(report.restored, [entry.queue_id])
        with open(record, "rb") as f:
            self.assertEqual(decode_record(f.read(), entry.message_path, entry.queue_id), entry)

    def test_after_the_same_boot_every_file_still_there_is_written_again_and_nothing_comes_back(self):
        """The page cache outlived the process, but a write it failed to put on disk would be
        in it too, unreported to this process: every file the entries still have is written
        again from the journal.  An entry gone since (delivered) stays gone."""
        path, (delivered, kept, moved_on, held) = self.committed()
        os.unlink(delivered.message_path[:-len(MSG)] + ENV)
        os.unlink(delivered.message_path)
        failed = os.path.join(self.directory, "failed")
        for suffix in (MSG, ENV):
            os.rename(os.path.join(self.directory, "queue", moved_on.queue_id + suffix),
                      os.path.join(failed, moved_on.queue_id + suffix))
        report = self.recover(BOOT)
        self.assertEqual(report.restored, [])  # nothing the disk lost: not reported as such
        self.assertNotIn(delivered.queue_id + ENV, self.listing("queue"))
        self.assertFalse(os.path.exists(path))
        written = {os.path.relpath(p, self.directory) for kind, p in self.recovery_ops.events if kind == "rename"}
        self.assertLessEqual({f"queue/{kept.queue_id}.msg", f"queue/{kept.queue_id}.env", f"failed/{moved_on.queue_id}.msg",
                              f"held/{held.queue_id}.msg", f"held/{held.queue_id}.env"}, written)
        self.assertNotIn(f"failed/{moved_on.queue_id}.env", written)  # a later record than the journal's

    def watch(self) -> int:
        """A descriptor of the spool's filesystem, as the parent opens one before a child starts."""
        fd = os.open(os.path.join(self.directory, "tmp"), os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, fd)
        return fd

    def settled_after_a_flush(self, settle) -> None:
        """``settle(watch)`` removes the dead child's journal, only after a flush through ``watch``."""
        path, (entry, *_rest) = self.committed()
        watch = self.watch()
        flushed = []
        real = FileOps.sync_filesystem

        def watched(ops, fd):
            flushed.append((fd == watch, os.path.exists(path)))
            real(ops, fd)

        self.patch(FileOps, "sync_filesystem", watched)
        settle(watch)
        self.assertIn((True, True), flushed)  # through the old descriptor, while the journal was there
        self.assertFalse(os.path.exists(path))
        self.assertTrue(os.path.exists(entry.message_path))

    def test_a_dead_childs_journal_is_settled_by_undo(self):
        self.settled_after_a_flush(lambda watch: self.disk(FileOps(), tag="dead0001").acceptor.undo(
            [], journal_path(os.path.join(self.directory, "tmp"), "dead0001", 1_700_000_000), watch))

    def test_a_dead_workers_journal_is_settled_by_the_sweep(self):
        self.settled_after_a_flush(
            lambda watch: spool_sweep.remove_temp_files(os.path.join(self.directory, "tmp"), "dead0001", watch))

    def test_a_journal_whose_flush_reports_an_error_stays_for_start_up(self):
        """A write the kernel failed since the worker started is reported to the descriptor
        opened before it: the journal is then the only sure copy, and stays."""
        path, _ = self.committed()

        def failed_write_reported(ops, fd):
            raise OSError(errno.EIO, "Input/output error")

        self.patch(FileOps, "sync_filesystem", failed_write_reported)
        cleanup = spool_sweep.remove_temp_files(os.path.join(self.directory, "tmp"), "dead0001", self.watch())
        self.assertTrue(os.path.exists(path))
        self.assertEqual(cleanup.kept_markers, (os.path.basename(path),))
        self.disk(FileOps(), tag="dead0001").acceptor.undo([], path, self.watch())
        self.assertTrue(os.path.exists(path))

    def test_without_a_descriptor_from_before_the_sweep_leaves_the_journal_to_start_up(self):
        path, _ = self.committed()
        cleanup = spool_sweep.remove_temp_files(os.path.join(self.directory, "tmp"), "dead0001")
        self.assertTrue(os.path.exists(path))
        self.assertEqual(cleanup.kept_markers, (os.path.basename(path),))

    def test_a_journal_that_cannot_be_worked_through_stays_and_recovery_goes_on(self):
        """A full disk at start-up: the journal stays for the next start; the queue is still recovered."""
        path, (lost, *rest) = self.committed()
        os.unlink(lost.message_path[:-len(MSG)] + ENV)
        os.unlink(lost.message_path)
        self.patch(journal_module, "_write_again", lambda *args: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        report = self.recover(OTHER_BOOT)
        self.assertTrue(os.path.exists(path))
        self.assertIn(os.path.basename(path), report.kept_markers)
        self.assertTrue(any("kept for the next start" in error for error in report.errors))
        self.assertEqual({queue_id for _, queue_id in report.schedule}, {e.queue_id for e in rest[:-1]})

    def test_an_entry_set_aside_since_is_not_brought_back(self):
        path, (quarantined, *_rest) = self.committed()
        quarantine = os.path.join(self.directory, "quarantine")
        for suffix in (MSG, ENV):
            os.rename(quarantined.message_path[:-len(MSG)] + suffix, os.path.join(quarantine, quarantined.queue_id + suffix))
        report = self.recover(OTHER_BOOT)
        self.assertNotIn(quarantined.queue_id, report.restored)
        self.assertNotIn(quarantined.queue_id + ENV, self.listing("queue"))

    def test_the_flush_that_lets_the_journals_go_is_through_a_descriptor_opened_before_the_rewrites(self):
        self.committed()
        order = []
        real_watch, real_mend, real_flush = inflight.watch_descriptor, journal_module.mend, RecordingFileOps.sync_filesystem
        import gateway.spool.recovery as recovery_module

        def watch(tmp):
            fd = real_watch(tmp)
            order.append(("watch", fd))
            return fd

        self.patch(inflight, "watch_descriptor", watch)
        self.patch(recovery_module, "mend", lambda *a, **k: order.append(("mend", None)) or real_mend(*a, **k))
        self.patch(RecordingFileOps, "sync_filesystem", lambda ops, fd: order.append(("flush", fd)) or real_flush(ops, fd))
        self.recover(BOOT)
        self.assertEqual([kind for kind, _ in order], ["watch", "mend", "flush"])
        self.assertEqual(order[0][1], order[2][1])  # the flush is through the descriptor opened first

    def test_a_journal_without_a_header_is_set_aside(self):
        path, _ = self.committed()
        with open(path, "r+b") as f:
            f.write(b"\0" * 1024)
        report = self.recover(OTHER_BOOT)
        self.assertEqual([q.name for q in report.quarantined], [os.path.basename(path)])
        self.assertIn(os.path.basename(path), self.listing("quarantine"))


class ChildTests(BatchCase):
    """The child's loop with a journal: answers after the journal's flush, retires while it waits."""

    def run_serve(self, disk: SpoolDisk, journal: IntakeJournal, *batches: list) -> list:
        import pickle

        to_child, from_parent = os.pipe()
        from_child, to_parent = os.pipe()
        with os.fdopen(from_parent, "wb") as f:
            for batch in batches:
                data = encode_batch(batch)
                f.write(commit_process._LENGTH.pack(len(data)) + data)
        commit_process.serve(disk.acceptor, disk.files.ops, to_child, to_parent, journal=journal)
        os.close(to_child)
        os.close(to_parent)
        with os.fdopen(from_child, "rb") as f:
            data = f.read()
        replies = []
        while data:
            (n,) = commit_process._LENGTH.unpack_from(data)
            replies.append(pickle.loads(data[4:4 + n]))
            data = data[4 + n:]
        return replies

    def test_the_answer_follows_the_journal_flush_and_the_end_retires_it(self):
        """Invariant 1 with the journal: the 250's answer is written after its fdatasync; at the
        end of its input the child flushes the filesystem and removes the journal."""
        ops = RecordingFileOps(whole_filesystem=True)
        disk = self.disk(ops)
        journal = self.journal(disk)
        del ops.events[:]
        requests = self.requests(2)
        (reply,) = self.run_serve(disk, journal, requests)
        self.assertTrue(all(isinstance(r, SpoolEntry) for r in commit_process._results(disk.acceptor, requests, reply)))
        kinds = [(kind, path == journal.path) for kind, path in ops.events if kind in ("fsync", "write", "syncfs")]
        answer = kinds.index(("write", False), kinds.index(("fsync", True)))
        self.assertNotIn(("syncfs", False), kinds[:answer])  # no flush of the filesystem before the answer
        self.assertIn(("syncfs", False), kinds[answer:])  # the retirement at the end
        self.assertFalse(os.path.exists(journal.path))

    def test_waiting_for_input_it_retires_when_due(self):
        ops = RecordingFileOps(whole_filesystem=True)
        disk = self.disk(ops)
        clock = Clock()
        journal = IntakeJournal(ops, journal_path(disk.layout.tmp, "main0001", 1), BOOT, size=SMALL, clock=clock)
        journal.append([JournalEntry("A1", "queue", b"{}", MESSAGE)])
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)
        self.addCleanup(os.close, write_fd)
        waits = []

        def no_input(r, w, x, timeout):
            waits.append(timeout)
            clock.now += timeout
            return [], [], []

        self.patch(select, "select", no_input)
        del ops.events[:]
        commit_process._wait_for_input(read_fd, journal)
        self.assertEqual(len(waits), 1)
        self.assertAlmostEqual(waits[0], RETIRE_AFTER)
        self.assertEqual(ops.events[0], ("syncfs", ""))
        self.assertIsNone(journal.retire_in())
