"""
Group commit (issue 13): concurrent acceptances share their flushes, a lone one waits for
nobody, a failed flush accepts nothing; and ``[queue] hold_new`` commits into held/.
"""

from __future__ import annotations

import errno
import json
import os

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.spool.disk import HOLD_NOTE, CommitRequest
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.interfaces import SpoolError
from gateway.spool.record import decode_record
from gateway.spool.store import DirectorySpool
from gateway.testing.harness import gateway_config, send_message, start_gateway
from gateway.testing.spool import FailingFileOps, RecordingFileOps
from gateway.testing.threads import ImmediateReactor, ManualThreadPool, SynchronousThreadPool

ENVELOPE = Envelope("app@example.com", ("a@example.com",))
PROVENANCE = Provenance(client_address="192.0.2.7", client_name="printer.example", listener="default")
MESSAGE = b"Subject: test\r\nFrom: app@example.com\r\n\r\nHello\r\n"


class GroupCommitTests(SynchronousTestCase):
    def make_spool(self, fileops=None, pool=None, **kwargs) -> DirectorySpool:
        self.clock = ImmediateReactor()
        self.clock.advance(1_700_000_000)
        self.directory = os.path.abspath(self.mktemp())
        spool = DirectorySpool(self.directory, pool or SynchronousThreadPool(), self.clock, fileops=fileops, **kwargs)
        self.addCleanup(spool.close)
        return spool

    def open_writers(self, spool: DirectorySpool, pool: ManualThreadPool, count: int) -> list:
        writers = []
        for _ in range(count):
            d = spool.open_writer()
            pool.run_all()
            writers.append(self.successResultOf(d))
        return writers

    def test_concurrent_commits_share_flushes(self):
        """Five sessions finishing DATA together: the first pays one batch, the four that
        arrive during its flush share the next — two data flushes, two directory fsyncs,
        instead of ten fdatasyncs and five directory fsyncs; with a flush of the whole
        filesystem, which comes after the renames, no directory fsync at all."""
        ops = RecordingFileOps(whole_filesystem=True)
        pool = ManualThreadPool()
        spool = self.make_spool(fileops=ops, pool=pool)
        writers = self.open_writers(spool, pool, 5)
        del ops.events[:]
        del ops.flushes[:]
        commits = []
        for writer in writers:
            writer.write(MESSAGE)
            commits.append(writer.commit(ENVELOPE, PROVENANCE))
        for d in commits:
            self.assertNoResult(d)
        pool.run_next()  # the first batch (the first commit alone)
        first = self.successResultOf(commits[0])
        for d in commits[1:]:
            self.assertNoResult(d)  # nothing is answered before its own batch is durable
        pool.run_all()
        entries = [first] + [self.successResultOf(d) for d in commits[1:]]
        self.assertEqual(spool.committer.batches, 2)
        self.assertEqual([len(paths) for paths in ops.flushes], [2, 8])  # message + record each
        self.assertEqual(sum(1 for op, _ in ops.events if op == "syncfs"), 2)
        self.assertEqual(sum(1 for op, _ in ops.events if op == "fsync-dir"), 0)
        for entry in entries:
            self.assertEqual(spool.disk.load(entry.queue_id), entry)

    def test_lone_commit_pays_one_flush(self):
        """A lone commit renames, then flushes once: one device flush per message, where it
        used to pay a second one for the directory."""
        ops = RecordingFileOps(whole_filesystem=True)
        spool = self.make_spool(fileops=ops)
        writer = self.successResultOf(spool.open_writer())
        del ops.events[:]
        writer.write(MESSAGE)
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        self.assertEqual(len(ops.flushes), 1)
        kinds = [op for op, _ in ops.events if op in ("fsync", "rename", "fsync-dir", "syncfs")]
        self.assertEqual(kinds, ["rename", "rename", "fsync", "fsync", "syncfs"])
        with open(os.path.join(self.directory, "queue", entry.queue_id + ".msg"), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)

    def test_small_message_needs_no_thread_job_of_its_own(self):
        """Writing, flushing and renaming a small message is the batch's single job."""
        pool = ManualThreadPool()
        spool = self.make_spool(pool=pool)
        writer, = self.open_writers(spool, pool, 1)
        writer.write(MESSAGE)
        d = writer.commit(ENVELOPE, PROVENANCE)
        self.assertEqual(len(pool.queue), 1)
        pool.run_next()
        self.successResultOf(d)
        self.assertEqual(pool.queue, [])

    def test_failed_flush_accepts_nothing_in_the_batch(self):
        pool = ManualThreadPool()
        spool = self.make_spool(fileops=FailingFileOps("sync_files", errno.EIO), pool=pool)
        writers = self.open_writers(spool, pool, 3)
        commits = []
        for writer in writers:
            writer.write(MESSAGE)
            commits.append(writer.commit(ENVELOPE, PROVENANCE))
        pool.run_all()
        for d in commits:
            self.failureResultOf(d, SpoolError)
        for sub in ("queue", "tmp"):
            self.assertEqual(os.listdir(os.path.join(self.directory, sub)), [])

    def test_one_bad_request_fails_alone(self):
        """A request that cannot even be written fails; the rest of its batch is accepted."""
        spool = self.make_spool()
        disk = spool.disk
        disk.ensure_directories()
        good = SpoolEntry("0SJ5Q4ZP1A2B3C4D5E6", ENVELOPE, PROVENANCE, 1.0, "", 0)
        bad = SpoolEntry("0SJ5Q4ZP1A2B3C4D5E7", ENVELOPE, PROVENANCE, 1.0, "", 0)
        # Its temp file name is taken (a leftover): creating it fails with EEXIST.
        with open(disk._tmp_path(bad.queue_id, ".msg"), "wb"):
            pass
        results = disk.publish_batch([CommitRequest(bad, data=MESSAGE), CommitRequest(good, data=MESSAGE)])
        self.assertIsInstance(results[0], SpoolError)
        self.assertIsInstance(results[1], SpoolEntry)
        self.assertEqual(disk.load(good.queue_id).size, len(MESSAGE))
        self.assertEqual(disk.queue_ids(), [good.queue_id])


class HoldNewTests(SynchronousTestCase):
    def test_hold_new_commits_into_held(self):
        clock = ImmediateReactor()
        clock.advance(1_700_000_000)
        directory = os.path.abspath(self.mktemp())
        spool = DirectorySpool(directory, SynchronousThreadPool(), clock, hold_new=True)
        self.addCleanup(spool.close)
        told = []
        spool.on_commit(told.append)
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        held = os.path.join(directory, "held")
        self.assertEqual(sorted(os.listdir(held)), [entry.queue_id + ".env", entry.queue_id + ".msg"])
        self.assertEqual(os.listdir(os.path.join(directory, "queue")), [])
        self.assertEqual(told, [])  # the runner is not told: nothing is attempted while held
        with open(os.path.join(held, entry.queue_id + ".env"), "rb") as f:
            record = decode_record(f.read(), entry.message_path)
        self.assertEqual(record.history[-1].reason, HOLD_NOTE)
        self.assertIsNotNone(record.message_digest)
        # Released like any admin hold: back in the queue, lifetime extended by the time held.
        clock.advance(600)
        released = spool.disk.release(entry.queue_id)
        self.assertEqual(released.received_at, entry.received_at + 600)
        self.assertEqual(os.listdir(held), [])
        self.assertEqual(spool.disk.load(entry.queue_id).envelope, ENVELOPE)

    def test_config_key(self):
        self.assertFalse(gateway_config(self).queue.hold_new)
        self.assertTrue(gateway_config(self, {"queue": {"hold_new": True}}).queue.hold_new)


class HoldNewGatewayTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_accepted_over_smtp_into_held_and_not_delivered(self):
        gw = yield start_gateway(self, {"queue": {"hold_new": True}})
        code, _ = yield send_message(gw.port(), "app@corp.example", ["b@corp.example"], MESSAGE)
        self.assertEqual(code, 250)
        spool = gw.components.spool.directory
        held = [n for n in os.listdir(os.path.join(spool, "held")) if n.endswith(".env")]
        self.assertEqual(len(held), 1)
        self.assertEqual(os.listdir(os.path.join(spool, "queue")), [])
        with open(os.path.join(spool, "held", held[0])) as f:
            self.assertEqual(json.load(f)["recipients"], ["b@corp.example"])
        self.assertEqual(gw.outbox_messages(), [])


class OldEntryTests(TestCase):
    """Entries written before group commit (and before the intake-decision fields) still deliver."""

    timeout = 30

    @inlineCallbacks
    def test_entry_written_by_an_older_gateway_is_delivered(self):
        state = os.path.abspath(self.mktemp())
        queue = os.path.join(state, "spool", "queue")
        os.makedirs(queue)
        queue_id = "0SJ5Q4ZP1A2B3C4D5E6"
        message = b"Received: from old\r\nSubject: old\r\nFrom: app@corp.example\r\n\r\nfrom before\r\n"
        # Exactly what a gateway of the first wave wrote: format 1, no sending_mailbox,
        # message_digest or draft_id.
        record = {
            "format": 1, "queue_id": queue_id, "sender": "app@corp.example", "recipients": ["b@corp.example"],
            "received_at": 1700000000.0, "client_address": "192.0.2.7", "client_name": "printer.example",
            "listener": "default", "tls": False, "auth_identity": None, "credential_ref": None,
            "size": len(message), "attempts": 0, "next_attempt_at": 0.0, "history": [],
        }
        with open(os.path.join(queue, queue_id + ".msg"), "wb") as f:
            f.write(message)
        with open(os.path.join(queue, queue_id + ".env"), "w") as f:
            json.dump(record, f)
        gw = yield start_gateway(self, {"gateway": {"state_dir": state}})
        yield gw.delivered(1)
        delivered = gw.outbox_messages()
        self.assertEqual(len(delivered), 1)
        self.assertIn(b"from before", delivered[0] if isinstance(delivered[0], bytes) else delivered[0].as_bytes())
        self.assertEqual(os.listdir(queue), [])


class FlushSettingTests(SynchronousTestCase):
    def test_per_file_flush_syncs_every_file(self):
        from gateway.spool.fileops import FileOps

        synced = []

        class Counting(FileOps):
            def sync_file(self, fd):
                synced.append(fd)
                super().sync_file(fd)

        directory = self.mktemp()
        os.makedirs(directory)
        fds = [os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o600) for name in ("a", "b")]
        for fd in fds:
            self.addCleanup(os.close, fd)
        Counting().flush_per_file().sync_files(fds)
        self.assertEqual(synced, fds)

    def test_config_key(self):
        self.assertEqual(gateway_config(self).spool.flush, "auto")
        self.assertEqual(gateway_config(self, {"spool": {"flush": "fdatasync"}}).spool.flush, "fdatasync")
        from gateway.config.errors import ConfigError
        with self.assertRaises(ConfigError):
            gateway_config(self, {"spool": {"flush": "never"}})


class ConcurrentSigkillTests(TestCase):
    """Invariant 1 under group commit: ten sessions committing at once share batches, and every
    one of them answered 250 survives a SIGKILL right after the last reply."""

    timeout = 120

    @inlineCallbacks
    def test_concurrently_acknowledged_messages_survive_sigkill(self):
        import signal

        from twisted.internet.defer import gatherResults

        from gateway.testing.harness import read_outbox
        from tests.test_gateway_durability import start_daemon

        state_dir = os.path.abspath(self.mktemp())
        os.makedirs(state_dir)
        blocker = os.path.join(state_dir, "not-a-directory")
        open(blocker, "w").close()  # the first daemon cannot deliver: everything stays spooled
        daemon = start_daemon(state_dir, "--outbox", os.path.join(blocker, "outbox"))
        port = yield daemon.port
        messages = [b"Subject: batch %d\r\nMessage-ID: <batch-%d@test>\r\n\r\nbody %d\r\n" % (i, i, i) for i in range(10)]
        replies = yield gatherResults([send_message(port, "a@corp.example", ["b@corp.example"], m) for m in messages])
        self.assertEqual([code for code, _ in replies], [250] * 10)
        acknowledged = {text.decode().rsplit(" ", 1)[-1] for _, text in replies}
        daemon.transport.signalProcess(signal.SIGKILL)
        yield daemon.ended

        outbox = os.path.join(state_dir, "outbox")
        again = start_daemon(state_dir, "--outbox", outbox)
        yield again.port
        yield again.wait_delivered({q.encode() for q in acknowledged})
        again.transport.signalProcess(signal.SIGTERM)
        yield again.ended
        self.assertEqual({m["Subject"] for m in read_outbox(outbox)}, {f"batch {i}" for i in range(10)})
