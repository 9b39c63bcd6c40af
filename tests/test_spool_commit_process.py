"""
Group commits in a child process (issue 13): the spool's file work off the GIL the SMTP
sessions hold.  Real child processes on the real reactor, committing into a temp directory.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config import ConfigError
from gateway.config.loader import build_config
from gateway.spool import commit_process, commit_wire
from gateway.spool.accept import Acceptor, CommitRequest
from gateway.spool.commit_wire import encode_batch
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.interfaces import SpoolError
from gateway.spool.layout import SpoolFiles
from gateway.spool.record import decode_record
from gateway.spool.store import DirectorySpool
from gateway.testing.spool import RecordingFileOps
from gateway.threads import ThreadPoolService
from gateway.wiring import build_spool

ENVELOPE = Envelope("app@example.com", ("a@example.com",))
PROVENANCE = Provenance(client_address="192.0.2.7", client_name="printer.example", listener="default")
MESSAGE = b"Subject: test\r\nFrom: app@example.com\r\n\r\n" + b"x" * 10_000 + b"\r\n"


class CommitProcessTests(TestCase):
    """The daemon's path: a DirectorySpool whose commits run in a child."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        pool = ThreadPoolService("test-spool", 1, 2)
        pool.startService()
        self.addCleanup(pool.stopService)
        self.spool = DirectorySpool(self.directory, pool.pool, reactor)
        self.spool.disk.ensure_directories()
        self.process = self.spool.commit_in_process()
        self.process.startService()
        self.addCleanup(self.process.stopService)
        self.in_thread = []
        run_in_thread = self.spool.committer._run_batch

        def recording(requests):
            self.in_thread.append([request.entry.queue_id for request in requests])
            return run_in_thread(requests)

        self.spool.committer._run_batch = recording

    @inlineCallbacks
    def child_from(self, module: str):
        """From now on the children run ``module`` instead of the commit process's."""
        yield self.process.stopService()
        self.process = self.spool.commit_in_process()
        self.process._module = module
        self.process.startService()
        self.addCleanup(self.process.stopService)

    def capture_log(self) -> list:
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    @inlineCallbacks
    def commit(self, message: bytes = MESSAGE):
        writer = yield self.spool.open_writer()
        writer.write(message)
        entry = yield writer.commit(ENVELOPE, PROVENANCE)
        return entry

    @inlineCallbacks
    def test_commit_runs_in_the_child(self):
        """A small message is committed by the child, not the spool's thread: its record and
        message are in queue/, whole, and this process ran no batch."""
        entry = yield self.commit()
        self.assertEqual(self.in_thread, [])
        self.assertNotEqual(self.process.pid, os.getpid())
        queue = os.path.join(self.directory, "queue")
        with open(os.path.join(queue, entry.queue_id + ".env"), "rb") as f:
            record = decode_record(f.read(), entry.message_path)
        self.assertEqual(record.envelope, ENVELOPE)
        with open(os.path.join(queue, entry.queue_id + ".msg"), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertEqual(entry.size, len(MESSAGE))
        # Nothing but the child's intake journal is left in tmp/.
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [os.path.basename(self.process.journal)])

    @inlineCallbacks
    def test_the_child_gets_no_secret_from_the_environment(self):
        """Invariant 5: the daemon's environment (a client secret passed that way, systemd's
        credentials directory) stays with the daemon; the child keeps only what Python needs."""
        yield self.process.stopService()
        self.patch(os, "environ", dict(os.environ, GRAPHSMTP_CLIENT_SECRET="s3cr3t-value",
                                       CREDENTIALS_DIRECTORY="/run/credentials/graphsmtp.service"))
        self.process.startService()
        entry = yield self.commit()  # it commits; and it has surely finished its exec (its environ is read below)
        with open(f"/proc/{self.process.pid}/environ", "rb") as f:
            environment = f.read()
        self.assertNotIn(b"s3cr3t-value", environment)
        self.assertNotIn(b"CREDENTIALS_DIRECTORY", environment)
        self.assertIn(b"PYTHONPATH=", environment)
        self.assertEqual(self.in_thread, [])
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", entry.queue_id + ".env")))

    @inlineCallbacks
    def test_concurrent_commits_share_the_child(self):
        """Ten commits at once: the first goes alone, the nine that come while it runs share
        the next batch; all committed by one child."""
        requests = [CommitRequest(_entry(f"0000000000A000000{n:02d}"), data=MESSAGE) for n in range(10)]
        before = self.spool.committer.batches
        results = yield _gather([self.spool.committer.commit(request) for request in requests])
        self.assertEqual([entry.queue_id for entry in results], [r.entry.queue_id for r in requests])
        self.assertEqual(self.spool.committer.batches - before, 2)
        self.assertEqual(self.process.started, 1)
        self.assertEqual(self.in_thread, [])
        self.assertEqual(len(os.listdir(os.path.join(self.directory, "queue"))), 20)

    @inlineCallbacks
    def test_ids_being_committed_are_known_here(self):
        """While the child commits, recovery in this process must leave the entry alone."""
        writer = yield self.spool.open_writer()
        writer.write(MESSAGE)
        d = writer.commit(ENVELOPE, PROVENANCE)
        acceptor = self.spool.disk.acceptor
        self.assertTrue(acceptor.is_committing(writer.queue_id))
        yield d
        self.assertFalse(acceptor.is_committing(writer.queue_id))

    @inlineCallbacks
    def test_large_message_in_a_temp_file_commits_in_the_thread(self):
        """A message streamed to a temp file of this process is committed here, by the thread."""
        entry = yield self.commit(b"Subject: big\r\n\r\n" + b"y" * (3 * 1024 * 1024))
        self.assertEqual(self.in_thread, [[entry.queue_id]])
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", entry.queue_id + ".msg")))

    @inlineCallbacks
    def test_a_child_that_dies_fails_its_batch_and_another_takes_over(self):
        """The child is killed holding a batch: that commit fails (451 for its client, nothing
        acknowledged), and the next commit starts a new child and succeeds."""
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP)  # the batch waits in the pipe, unread
        writer = yield self.spool.open_writer()
        writer.write(MESSAGE)
        d = writer.commit(ENVELOPE, PROVENANCE)
        os.kill(pid, signal.SIGKILL)
        error = yield self.assertFailure(d, SpoolError)
        self.assertIn("commit process ended", str(error))
        self.assertFalse(os.path.exists(os.path.join(self.directory, "queue", writer.queue_id + ".env")))
        entry = yield self.commit()
        self.assertEqual(self.process.started, 2)
        self.assertNotEqual(self.process.pid, pid)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", entry.queue_id + ".env")))
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_a_child_that_dies_after_committing_leaves_nothing(self):
        """The child dies after its batch's renames and flush, before it answers: the client is
        told to try again (451), so the entry it cannot know about is removed, with the
        batch's marker; the next child is started for the next commit."""
        yield self.child_from("tests.commit_child_dies")
        writer = yield self.spool.open_writer()
        writer.write(MESSAGE)
        error = yield self.assertFailure(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
        self.assertIn("commit process ended", str(error))
        for where in ("queue", "tmp", "held"):
            self.assertEqual(os.listdir(os.path.join(self.directory, where)), [], where)
        self.assertFalse(self.spool.disk.acceptor.is_committing(writer.queue_id))

    @inlineCallbacks
    def test_a_child_killed_between_batches_leaves_its_entries_and_no_journal(self):
        """What it answered for stays; its journal goes after a flush made that durable in
        place, so no later power loss can bring back an entry delivered since."""
        entry = yield self.commit()
        child, journal = self.process._child, self.process.journal
        self.assertTrue(os.path.exists(journal))
        flushes = []
        real = FileOps.sync_filesystem

        def watched(ops, fd):
            flushes.append(os.path.exists(journal))
            real(ops, fd)

        self.patch(FileOps, "sync_filesystem", watched)
        os.kill(self.process.pid, signal.SIGKILL)
        yield child.ended
        self.assertTrue(flushes and all(flushes))  # flushed while the journal was still there
        self.assertFalse(os.path.exists(journal))
        self.assertTrue(os.path.exists(entry.message_path))
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_without_the_journal_a_batch_waits_for_a_flush_of_the_filesystem(self):
        yield self.process.stopService()
        self.process = self.spool.commit_in_process(journal=False)
        self.process.startService()
        self.addCleanup(self.process.stopService)
        entry = yield self.commit()
        self.assertIsNone(self.process.journal)
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])
        self.assertTrue(os.path.exists(entry.message_path))

    @inlineCallbacks
    def test_a_child_that_cannot_be_started_leaves_the_batch_to_the_threads(self):
        """No file descriptor left to start a child with: the batch is committed in the
        spool's threads, and the commits after it are not held up."""
        pid = self.process.pid
        child = self.process._child
        os.kill(pid, signal.SIGKILL)
        yield child.ended

        def no_descriptors():
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        self.process._start_child = no_descriptors
        first = yield self.commit()
        second = yield self.commit()
        self.assertEqual(self.in_thread, [[first.queue_id], [second.queue_id]])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    @inlineCallbacks
    def test_a_batch_that_cannot_be_written_to_the_child_is_committed_once_and_kept(self):
        """Writing the batch to the child fails: the threads commit it, the child (which may
        have got part of it) is stopped, and its end undoes nothing of that batch; the next
        commit goes to a new child and is answered."""
        child = self.process._child
        real_write = child.transport.write

        def failing_write(data):
            child.transport.write = real_write
            raise MemoryError()

        child.transport.write = failing_write
        first = yield self.commit()
        yield child.ended
        self.assertEqual(self.in_thread, [[first.queue_id]])
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", first.queue_id + ".env")))
        self.assertFalse(self.spool.disk.acceptor.is_committing(first.queue_id))
        second = yield self.commit()
        self.assertEqual(self.in_thread, [[first.queue_id]])
        self.assertEqual(self.process.started, 2)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", second.queue_id + ".env")))
        self.flushLoggedErrors(MemoryError)

    @inlineCallbacks
    def test_stop_answers_the_batch_in_flight(self):
        """Stopping while a batch is in the child: it is committed and answered, then the child exits."""
        writer = yield self.spool.open_writer()
        writer.write(MESSAGE)
        d = writer.commit(ENVELOPE, PROVENANCE)
        yield self.process.stopService()
        entry = yield d
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", entry.queue_id + ".env")))
        self.assertIsNone(self.process.pid)

    @inlineCallbacks
    def test_a_child_that_cannot_start_leaves_the_commits_to_the_threads(self):
        """A child that ends before its first answer, three times in a row: those commits fail
        (451, nothing acknowledged), the log says what happens next, and later commits are
        made by the spool's threads."""
        events = self.capture_log()
        yield self.child_from("tests.no_such_module")
        yield self.process._child.ended  # the first child, started with the service, has ended
        failed = 0
        while self.process.usable:
            writer = yield self.spool.open_writer()
            writer.write(MESSAGE)
            yield self.assertFailure(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
            failed += 1
        self.assertEqual(failed, commit_process.GIVE_UP_AFTER - 1)
        self.assertEqual(self.process.started, commit_process.GIVE_UP_AFTER)
        entry = yield self.commit()
        self.assertEqual(self.in_thread, [[entry.queue_id]])
        said = [formatEvent(e) for e in events]
        self.assertTrue(any("intake commits in the spool's threads from now on" in line for line in said), said)
        self.assertTrue(any("No module named tests.no_such_module" in line for line in said), said)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "queue", entry.queue_id + ".env")))

    @inlineCallbacks
    def test_a_child_that_reads_another_format_leaves_the_commits_to_the_threads(self):
        """The package changed under the running daemon, and a new child reads batches in another
        format: it commits none of them, the log says to restart, those commits fail (451),
        and after three such children the spool's threads commit with the daemon's own code."""
        events = self.capture_log()
        yield self.child_from("tests.commit_child_other_format")
        failed = []
        while self.process.usable:
            writer = yield self.spool.open_writer()
            writer.write(MESSAGE)
            yield self.assertFailure(writer.commit(ENVELOPE, PROVENANCE), SpoolError)
            failed.append(writer.queue_id)
        self.assertEqual(len(failed), commit_process.GIVE_UP_AFTER)
        for queue_id in failed:
            self.assertFalse(os.path.exists(os.path.join(self.directory, "queue", queue_id + ".env")))
        entry = yield self.commit()
        self.assertEqual(self.in_thread, [[entry.queue_id]])
        said = [formatEvent(e) for e in events]
        self.assertTrue(any("restart the daemon" in line for line in said), said)
        self.assertTrue(any("intake commits in the spool's threads from now on" in line for line in said), said)
        self.assertEqual(os.listdir(os.path.join(self.directory, "tmp")), [])  # no journal left behind

    @inlineCallbacks
    def test_stop_ends_the_child(self):
        """Stopping closes the child's stdin; it exits, and is reaped."""
        yield self.commit()
        pid = self.process.pid
        yield self.process.stopService()
        self.assertIsNone(self.process.pid)
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertIsNone(self.process.run_batch([CommitRequest(_entry("0000000000A00000009"), data=MESSAGE)]))
        self.assertIsNone(self.process.pid)  # stopped: no new child; the threads commit


def _entry(queue_id: str) -> SpoolEntry:
    return SpoolEntry(queue_id=queue_id, envelope=ENVELOPE, provenance=PROVENANCE, received_at=1_700_000_000.0,
                      message_path="", size=0)


def _gather(ds: list) -> Deferred:
    from twisted.internet.defer import gatherResults
    return gatherResults(ds, consumeErrors=True)


class ServeTests(SynchronousTestCase):
    """The child's loop, in this process over pipes: the same acceptance as the thread's."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.ops = RecordingFileOps(whole_filesystem=True)
        self.files = SpoolFiles(self.directory, self.ops, "t1", lambda: 1_700_000_000.0)
        self.files.ensure_directories()

    def run_serve(self, *payloads: bytes) -> list:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        for payload in payloads:
            os.write(from_parent, commit_process._LENGTH.pack(len(payload)) + payload)
        os.close(from_parent)
        commit_process.serve(Acceptor(self.files), self.ops, to_child, from_child)
        os.close(to_child)
        os.close(from_child)
        replies = []
        with os.fdopen(to_parent, "rb") as f:
            data = f.read()
        while data:
            (n,) = commit_process._LENGTH.unpack_from(data)
            replies.append(pickle.loads(data[4:4 + n]))
            data = data[4 + n:]
        return replies

    def entry(self, queue_id: str) -> SpoolEntry:
        return _entry(queue_id)

    def test_undo_removes_the_entries_their_temp_files_and_their_marker_only(self):
        """What a commit cut short left (in place, renamed, marked) goes; another batch's marker
        and another entry stay."""
        acceptor = Acceptor(self.files)
        kept = [CommitRequest(self.entry("0000000000A00000010"), data=MESSAGE)]
        acceptor.publish_batch(kept)
        cut_short = [CommitRequest(self.entry("0000000000A00000011"), data=MESSAGE),
                     CommitRequest(self.entry("0000000000A00000012"), "held", data=MESSAGE)]
        acceptor.publish_batch(cut_short)
        tmp = os.path.join(self.directory, "tmp")
        ours = os.path.join(tmp, "t1.0000000000A00000011.0000000000A00000012.inflight")
        other = os.path.join(tmp, "t1.0000000000A00000010.0000000000A00000013.inflight")
        for path in (ours, other, os.path.join(tmp, "t1.0000000000A00000011.env")):
            open(path, "wb").close()
        acceptor.undo(cut_short)
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "queue"))),
                         ["0000000000A00000010.env", "0000000000A00000010.msg"])
        self.assertEqual(os.listdir(os.path.join(self.directory, "held")), [])
        self.assertEqual(os.listdir(tmp), [os.path.basename(other)])

    def test_batches_are_committed_in_order_with_one_flush_each(self):
        first = [CommitRequest(self.entry("0000000000A00000001"), "queue", data=MESSAGE)]
        second = [CommitRequest(self.entry("0000000000A00000002"), "held", data=MESSAGE),
                  CommitRequest(self.entry("0000000000A00000003"), "queue", data=MESSAGE)]
        replies = self.run_serve(encode_batch(first), encode_batch(second))
        acceptor = Acceptor(self.files)
        results = [commit_process._results(acceptor, batch, reply) for batch, reply in zip((first, second), replies, strict=True)]
        self.assertEqual([[e.queue_id for e in batch] for batch in results],
                         [["0000000000A00000001"], ["0000000000A00000002", "0000000000A00000003"]])
        self.assertEqual(len([e for e in self.ops.events if e[0] == "syncfs"]), 2)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "held", "0000000000A00000002.msg")))

    def test_the_answer_is_written_only_after_the_batch_is_flushed(self):
        """Invariant 1 in the child: its answer (the parent's 250) follows the flush."""
        self.run_serve(encode_batch([CommitRequest(self.entry("0000000000A00000005"), data=MESSAGE)]))
        kinds = [kind for kind, path in self.ops.events if kind in ("syncfs", "write")]
        self.assertEqual(kinds[-2:], ["syncfs", "write"])  # the last write is the answer, on the pipe
        self.assertEqual(self.ops.events[-1], ("write", "?"))

    def test_a_batch_that_fails_unexpectedly_is_answered_with_an_error_not_an_exit(self):
        broken = CommitRequest(self.entry("0000000000A00000009"), "nowhere", data=MESSAGE)  # a bug's batch
        request = CommitRequest(self.entry("0000000000A00000004"), data=MESSAGE)
        replies = self.run_serve(encode_batch([broken]), encode_batch([request]))
        self.assertIsInstance(replies[0], SpoolError)
        self.assertIn("unexpectedly", str(replies[0]))
        self.assertEqual(commit_process._results(Acceptor(self.files), [request], replies[1])[0].queue_id,
                         "0000000000A00000004")

    def test_a_batch_it_cannot_read_ends_it_without_an_answer(self):
        """Answering an error would fail every later batch alike (a parent running other code):
        the child ends with its own status, nothing of the batch committed, nothing answered."""
        request = CommitRequest(self.entry("0000000000A0000000A"), data=MESSAGE)
        for unreadable in (pickle.dumps([request]), b"not a pickle", pickle.dumps((commit_wire.FORMAT + 1, []))):
            with self.subTest(unreadable=unreadable[:16]):
                e = self.assertRaises(SystemExit, self.run_serve, unreadable, encode_batch([request]))
                self.assertEqual(e.code, commit_process.EXIT_UNREADABLE_BATCH)
                self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [])

    def test_the_parent_builds_the_entries_the_child_stored(self):
        """The child answers a size and digest per message, not the entry: what the parent
        builds from its requests is exactly what the records on disk say, held/ included."""
        batch = [CommitRequest(self.entry("0000000000A00000006"), "queue", data=MESSAGE),
                 CommitRequest(self.entry("0000000000A00000007"), "held", data=MESSAGE + b"more\r\n")]
        (reply,) = self.run_serve(encode_batch(batch))
        self.assertNotIsInstance(reply[0], SpoolEntry)  # the cheap answer, not a pickled entry
        built = commit_process._results(Acceptor(self.files), batch, reply)
        for entry, where in zip(built, ("queue", "held"), strict=True):
            path = os.path.join(self.directory, where, entry.queue_id)
            with open(path + ".env", "rb") as f:
                self.assertEqual(entry, decode_record(f.read(), path + ".msg", entry.queue_id))

    def test_a_reply_that_does_not_fit_its_batch_is_unreadable(self):
        batch = [CommitRequest(self.entry("0000000000A00000008"), data=MESSAGE)]
        for reply in ([], [(1, "x"), (1, "y")], "nonsense"):
            self.assertRaises(ValueError, commit_process._results, Acceptor(self.files), batch, reply)
        error = SpoolError("disk full")
        self.assertIs(commit_process._results(Acceptor(self.files), batch, error), error)
        self.assertEqual(commit_process._results(Acceptor(self.files), batch, [error]), [error])

    def test_a_child_whose_parent_is_not_there_exits(self):
        """Started for a parent that is already gone, the child does not stay."""
        not_a_pid = "999999999"  # above any pid_max
        result = subprocess.run([sys.executable, "-m", "gateway.spool.commit_process", self.directory, "t1", not_a_pid],
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                                env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        self.assertEqual(result.returncode, 1)


class ConfigTests(SynchronousTestCase):
    def test_the_daemon_commits_in_a_process_unless_told_otherwise(self):
        state = os.path.abspath(self.mktemp())
        config = build_config({"gateway": {"state_dir": state}}, {}, {}, state)
        self.assertEqual(config.spool.committer, "process")
        parts = build_spool(config, reactor)
        self.assertIsNotNone(parts.commits)
        self.assertEqual(parts.services, [parts.pool, parts.commits])  # stopped before the pool
        config = build_config({"gateway": {"state_dir": state}, "spool": {"committer": "thread"}}, {}, {}, state)
        self.assertIsNone(build_spool(config, reactor).commits)

    def test_the_commit_process_keeps_a_journal_unless_told_otherwise(self):
        state = os.path.abspath(self.mktemp())
        config = build_config({"gateway": {"state_dir": state}}, {}, {}, state)
        self.assertTrue(config.spool.journal)
        self.assertTrue(build_spool(config, reactor).commits._journal)
        config = build_config({"gateway": {"state_dir": state}, "spool": {"journal": False}}, {}, {}, state)
        self.assertFalse(build_spool(config, reactor).commits._journal)
        config = build_config({"gateway": {"state_dir": state}, "spool": {"flush": "fdatasync"}}, {}, {}, state)
        self.assertFalse(build_spool(config, reactor).commits._journal)  # nothing to retire it with

    def test_an_unknown_committer_is_refused(self):
        with self.assertRaises(ConfigError) as caught:
            build_config({"spool": {"committer": "fork"}}, {}, {}, os.path.abspath(self.mktemp()))
        self.assertIn("committer", str(caught.exception))
