"""
QueueRunner on a real DirectorySpool whose thread jobs run inline, driven by a fake clock:
backoff and jitter, Retry-After, lifetime expiry, permanent failures, concurrency, observers,
graceful stop, recovery at start, sendmail drop-offs and admin requests.
"""

from __future__ import annotations

import json
import os

import attrs
from twisted.internet.defer import fail
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.model import QueueConfig
from gateway.delivery.interfaces import (
    Delivered,
    Permanent,
    Transient,
)
from gateway.queue.backoff import retry_delay
from gateway.queue.runner import QueueRunner
from gateway.spool.disk import ControlRequest, SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.store import DirectorySpool
from gateway.testing.delivery import RecordingObserver, ScriptedDeliverer
from gateway.testing.memory_spool import MemorySpool
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool

START = 1_700_000_000.0
ENVELOPE = Envelope("app@example.com", ("a@example.com",))
PROVENANCE = Provenance("192.0.2.1", "client.example", "default")
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


class RunnerTestBase(SynchronousTestCase):
    config = QueueConfig(concurrency=4, retry_schedule=(60.0, 300.0, 900.0), jitter=0.0,
                         max_lifetime=86400.0, shutdown_grace=30.0)

    def setUp(self):
        self.clock = ImmediateReactor()
        self.clock.advance(START)
        self.directory = os.path.abspath(self.mktemp())
        self.spool = self.new_spool()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def new_spool(self):
        spool = DirectorySpool(self.directory, SynchronousThreadPool(), self.clock)
        self.addCleanup(spool.close)
        return spool

    def start(self, deliverer, config=None, observers=(), random=lambda: 0.5, spool=None):
        runner = QueueRunner(spool or self.spool, deliverer, config or self.config, self.clock,
                             observers=observers, random=random)
        runner.startService()
        self.addCleanup(lambda: runner.running and runner.stopService())
        self.successResultOf(runner.ready)
        return runner

    def accept(self, spool=None, data=MESSAGE):
        writer = self.successResultOf((spool or self.spool).open_writer())
        writer.write(data)
        return self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))

    def messages(self):
        return [formatEvent(e) for e in self.events]

    def queued_ids(self):
        return SpoolDisk(self.directory).queue_ids()

    def record(self, queue_id):
        return SpoolDisk(self.directory).load(queue_id)


class DeliveryTests(RunnerTestBase):
    def test_committed_entry_delivered_at_once_and_removed(self):
        deliverer = ScriptedDeliverer(Delivered("ok"))
        observer = RecordingObserver()
        self.start(deliverer, observers=[observer])
        entry = self.accept()
        self.assertEqual([e.queue_id for e in deliverer.calls], [entry.queue_id])
        self.assertEqual(self.queued_ids(), [])
        self.assertEqual(observer.summary, [("delivered", entry.queue_id, Delivered("ok"))])
        self.assertIn(f"delivered {entry.queue_id}", self.messages())

    def test_backoff_schedule_last_value_repeats(self):
        deliverer = ScriptedDeliverer(*[Transient("Graph 503")] * 5)
        runner = self.start(deliverer)
        entry = self.accept()
        attempt_times = [START]
        for expected_delay in (60, 300, 900, 900):
            record = self.record(entry.queue_id)
            self.assertEqual(record.next_attempt_at - attempt_times[-1], expected_delay)
            self.clock.advance(expected_delay - 1)
            self.assertEqual(len(deliverer.calls), len(attempt_times))  # not early
            self.clock.advance(1)
            self.assertEqual(len(deliverer.calls), len(attempt_times) + 1)
            attempt_times.append(self.clock.seconds())
        record = self.record(entry.queue_id)
        self.assertEqual(record.attempts, 5)
        self.assertEqual([h.reason for h in record.history], ["Graph 503"] * 5)
        self.assertEqual([h.at for h in record.history], attempt_times)
        self.assertEqual(runner.stats.deferred, 5)
        self.assertIn(f"deferred {entry.queue_id} attempt 1 retry in 60s: Graph 503", self.messages())
        self.assertIn(f"deferred {entry.queue_id} attempt 3 retry in 900s: Graph 503", self.messages())

    def test_asynchronous_outcomes_are_rescheduled(self):
        """Outcomes that arrive later (as from a real network deliverer) schedule the retry while
        the attempt is still in flight; the retry must still happen."""
        deliverer = ScriptedDeliverer("wait", "wait", "wait")
        runner = self.start(deliverer)
        entry = self.accept()
        deliverer.pending[0].callback(Transient("slow failure"))
        self.assertEqual(runner.in_flight, 0)
        self.assertEqual(runner.queued, 1)
        self.clock.advance(60)
        self.assertEqual(len(deliverer.calls), 2)
        deliverer.pending[1].callback(Transient("throttled", retry_at=self.clock.seconds()))
        self.clock.advance(0)
        self.assertEqual(len(deliverer.calls), 3)
        deliverer.pending[2].callback(Delivered())
        self.assertEqual(self.queued_ids(), [])
        self.assertEqual(runner.queued, 0)
        self.assertEqual([h.reason for h in deliverer.calls[2].history], ["slow failure", "throttled"])
        self.assertEqual(entry.queue_id, deliverer.calls[2].queue_id)

    def test_jitter_bounds(self):
        for r, expected in ((0.0, 48.0), (0.5, 60.0), (0.999999, 72.0)):
            self.assertAlmostEqual(retry_delay(1, (60.0, 300.0), 0.2, lambda r=r: r), expected, places=3)
        self.assertAlmostEqual(retry_delay(7, (60.0, 300.0), 0.2, lambda: 0.0), 240.0)
        # and the runner uses it:
        deliverer = ScriptedDeliverer(Transient("busy"))
        self.start(deliverer, config=attrs.evolve(self.config, jitter=0.2), random=lambda: 0.0)
        entry = self.accept()
        self.assertEqual(self.record(entry.queue_id).next_attempt_at, START + 48.0)

    def test_retry_at_honoured_exactly(self):
        deliverer = ScriptedDeliverer(Transient("throttled", retry_at=START + 17.5))
        self.start(deliverer)
        entry = self.accept()
        self.assertEqual(self.record(entry.queue_id).next_attempt_at, START + 17.5)
        self.clock.advance(17.4)
        self.assertEqual(len(deliverer.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(deliverer.calls), 2)
        self.assertEqual(self.queued_ids(), [])

    def test_not_attempted_is_rescheduled_without_counting_an_attempt(self):
        observer = RecordingObserver()
        deliverer = ScriptedDeliverer(Transient("mailbox paced", retry_at=START + 2.0, attempted=False))
        runner = self.start(deliverer, observers=[observer])
        entry = self.accept()
        record = self.record(entry.queue_id)
        self.assertEqual((record.attempts, record.history), (0, ()))
        self.assertEqual((runner.stats.deferred, observer.summary), (0, []))
        self.clock.advance(1.9)
        self.assertEqual(len(deliverer.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(deliverer.calls), 2)
        self.assertEqual(deliverer.calls[1].attempts, 0)
        self.assertEqual([kind for kind, _, _ in observer.summary], ["delivered"])
        self.assertEqual(self.queued_ids(), [])

    def test_hung_attempt_is_cancelled_and_retried(self):
        deliverer = ScriptedDeliverer("wait")
        runner = self.start(deliverer, config=attrs.evolve(self.config, attempt_timeout=600.0))
        entry = self.accept()
        self.clock.advance(599)
        self.assertEqual(runner.in_flight, 1)
        self.clock.advance(1)
        self.assertEqual(runner.in_flight, 0)
        self.assertEqual(runner.stats.possibly_delivered, 1)
        record = self.record(entry.queue_id)
        self.assertEqual(record.attempts, 1)
        self.assertIn("timed out", record.history[-1].reason)
        self.clock.advance(60)
        self.assertEqual(len(deliverer.calls), 2)

    def test_delivered_line_carries_the_documented_namespace(self):
        """
        Operators filter the runner's lines on the namespace docs/health-and-logs.md shows; a
        class-level Logger is renamed after its class by Twisted, so moving the class between
        packages silently changed it once.
        """
        runner = self.start(ScriptedDeliverer(Delivered("ok")))
        entry = self.accept()
        delivered = [e for e in self.events if e.get("queue_id") == entry.queue_id and e.get("status") == "sent"]
        self.assertEqual(len(delivered), 1)
        docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "health-and-logs.md")
        with open(docs, encoding="utf-8") as f:
            example = json.loads(next(line.strip() for line in f if '"text":"delivered ' in line))
        self.assertEqual(delivered[0]["log_namespace"], example["namespace"])
        self.assertEqual(example["namespace"], "gateway.spool.runner.QueueRunner")
        self.assertTrue(runner.running)

    def test_possibly_delivered_counted_and_logged(self):
        deliverer = ScriptedDeliverer(Transient("timeout after body sent", possibly_delivered=True))
        runner = self.start(deliverer)
        entry = self.accept()
        self.assertEqual(runner.stats.possibly_delivered, 1)
        self.assertTrue(any(m.startswith(f"possibly delivered {entry.queue_id}") for m in self.messages()))

    def test_permanent_moves_to_failed_with_reason(self):
        outcome = Permanent("mailbox not found", status="5.1.1", remote_code="ErrorInvalidRecipients")
        observer = RecordingObserver()
        runner = self.start(ScriptedDeliverer(outcome), observers=[observer])
        entry = self.accept()
        self.assertEqual(self.queued_ids(), [])
        disk = SpoolDisk(self.directory)
        self.assertEqual(disk.queue_ids(disk.layout.failed), [entry.queue_id])
        reason = "5.1.1 mailbox not found (ErrorInvalidRecipients)"
        self.assertEqual(disk.failure_reason(entry.queue_id), reason)
        self.assertEqual(observer.summary, [("failed", entry.queue_id, outcome)])
        self.assertIn(f"failed {entry.queue_id}: {reason}", self.messages())
        self.assertEqual(runner.stats.failed, 1)

    def test_lifetime_expiry_moves_to_failed(self):
        config = attrs.evolve(self.config, retry_schedule=(3600.0,), max_lifetime=3 * 3600.0)
        deliverer = ScriptedDeliverer()
        deliverer.default = Transient("Graph down")
        observer = RecordingObserver()
        self.start(deliverer, config=config, observers=[observer])
        entry = self.accept()
        self.clock.advance(3600)
        self.clock.advance(3600)
        self.assertEqual(self.queued_ids(), [entry.queue_id])
        self.clock.advance(3600)  # the attempt at the end of the lifetime fails too
        self.assertEqual(len(deliverer.calls), 4)
        self.assertEqual(self.queued_ids(), [])
        disk = SpoolDisk(self.directory)
        self.assertIn("queue lifetime of 3h expired; last error: Graph down", disk.failure_reason(entry.queue_id))
        kind, queue_id, outcome = observer.summary[-1]
        self.assertEqual((kind, queue_id, outcome.status), ("failed", entry.queue_id, "4.4.7"))
        failed = disk.load(entry.queue_id, directory=disk.layout.failed)
        self.assertEqual(failed.attempts, 4)

    def test_mail_that_is_never_attempted_still_expires(self):
        config = attrs.evolve(self.config, max_lifetime=3600.0)
        deliverer = ScriptedDeliverer()
        deliverer.default = Transient("mailbox paused by Graph", retry_at=START + 10 * 3600, attempted=False)
        self.start(deliverer, config=config)
        entry = self.accept()
        self.assertEqual(self.queued_ids(), [entry.queue_id])
        self.clock.advance(10 * 3600)
        self.assertEqual(self.queued_ids(), [])
        disk = SpoolDisk(self.directory)
        self.assertIn("queue lifetime of 1h expired; last error: mailbox paused by Graph", disk.failure_reason(entry.queue_id))

    def test_last_attempt_not_later_than_lifetime(self):
        config = attrs.evolve(self.config, retry_schedule=(3600.0,), max_lifetime=5400.0)
        deliverer = ScriptedDeliverer()
        deliverer.default = Transient("down")
        self.start(deliverer, config=config)
        entry = self.accept()
        self.clock.advance(3600)
        self.assertEqual(self.record(entry.queue_id).next_attempt_at, START + 5400.0)
        self.clock.advance(1800)
        self.assertEqual(self.queued_ids(), [])

    def test_deliverer_exception_is_transient(self):
        deliverer = ScriptedDeliverer(ValueError("bug in deliverer"))
        runner = self.start(deliverer)
        entry = self.accept()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        record = self.record(entry.queue_id)
        self.assertEqual(record.attempts, 1)
        self.assertIn("internal error in deliverer: ValueError", record.history[0].reason)
        self.assertEqual(runner.stats.deliverer_errors, 1)

    def test_observer_exceptions_do_not_affect_delivery(self):
        bad, good = RecordingObserver(explode=True), RecordingObserver()
        self.start(ScriptedDeliverer(Delivered()), observers=[bad, good])
        entry = self.accept()
        self.assertEqual(self.queued_ids(), [])
        self.assertEqual(len(good.events), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(f"delivered {entry.queue_id}", self.messages())

    def test_concurrency_bound(self):
        deliverer = ScriptedDeliverer(*["wait"] * 5)
        runner = self.start(deliverer, config=attrs.evolve(self.config, concurrency=2))
        entries = [self.accept() for _ in range(5)]
        self.assertEqual(len(deliverer.calls), 2)
        self.assertEqual(runner.in_flight, 2)
        deliverer.pending[0].callback(Delivered())
        self.assertEqual(len(deliverer.calls), 3)
        self.assertEqual(runner.in_flight, 2)
        while True:
            waiting = [d for d in deliverer.pending if not d.called]
            if not waiting:
                break
            self.assertLessEqual(len(waiting), 2)
            waiting[0].callback(Delivered())
        self.assertEqual(sorted(e.queue_id for e in deliverer.calls), sorted(e.queue_id for e in entries))
        self.assertEqual(self.queued_ids(), [])


class LifecycleTests(RunnerTestBase):
    def test_recovery_delivers_queued_and_respects_next_attempt(self):
        due = self.accept()
        later = self.accept()
        self.successResultOf(self.spool.update(attrs.evolve(later, attempts=1, next_attempt_at=START + 600)))
        self.spool.close()
        spool = self.new_spool()
        deliverer = ScriptedDeliverer()
        self.start(deliverer, spool=spool)
        self.assertEqual([e.queue_id for e in deliverer.calls], [due.queue_id])
        self.clock.advance(599)
        self.assertEqual(len(deliverer.calls), 1)
        self.clock.advance(1)
        self.assertEqual([e.queue_id for e in deliverer.calls], [due.queue_id, later.queue_id])
        self.assertEqual(self.queued_ids(), [])

    def test_early_hint_is_corrected_by_record(self):
        """A wrong schedule hint (record mtime) costs one look, not an early delivery."""
        entry = self.accept()
        self.successResultOf(self.spool.update(attrs.evolve(entry, attempts=1, next_attempt_at=START + 600)))
        os.utime(os.path.join(self.directory, "queue", entry.queue_id + ".env"), (START, START))
        self.spool.close()
        deliverer = ScriptedDeliverer()
        self.start(deliverer, spool=self.new_spool())
        self.assertEqual(deliverer.calls, [])
        self.clock.advance(600)
        self.assertEqual(len(deliverer.calls), 1)

    def test_works_with_plain_ispool(self):
        spool = MemorySpool()
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        deliverer = ScriptedDeliverer()
        self.start(deliverer, spool=spool)
        self.assertEqual(len(deliverer.calls), 1)
        self.assertEqual(spool.messages, [])

    def test_graceful_stop_waits_for_in_flight(self):
        deliverer = ScriptedDeliverer("wait", "wait")
        runner = self.start(deliverer, config=attrs.evolve(self.config, concurrency=1))
        self.accept()
        second = self.accept()
        stopped = runner.stopService()
        self.assertNoResult(stopped)
        deliverer.pending[0].callback(Delivered())
        self.successResultOf(stopped)
        self.assertEqual(len(deliverer.calls), 1)  # no new delivery started while stopping
        self.assertEqual(self.queued_ids(), [second.queue_id])  # the rest stays safely queued
        self.assertFalse(self.clock.getDelayedCalls())

    def test_graceful_stop_gives_up_after_grace(self):
        deliverer = ScriptedDeliverer("wait")
        runner = self.start(deliverer)
        entry = self.accept()
        stopped = runner.stopService()
        self.clock.advance(29)
        self.assertNoResult(stopped)
        self.clock.advance(1)
        self.successResultOf(stopped)
        self.assertEqual(self.queued_ids(), [entry.queue_id])
        self.assertFalse(self.clock.getDelayedCalls())

    def test_stop_with_nothing_in_flight_leaves_no_timers(self):
        deliverer = ScriptedDeliverer(Transient("later"))
        runner = self.start(deliverer)
        self.accept()
        self.assertTrue(self.clock.getDelayedCalls())
        self.successResultOf(runner.stopService())
        self.assertFalse(self.clock.getDelayedCalls())

    def test_recovery_failure_is_reported(self):
        other = DirectorySpool(self.directory, SynchronousThreadPool(), self.clock)
        self.successResultOf(other.recover_schedule())
        self.addCleanup(other.close)
        self.spool.disk.lock_wait = 0
        runner = QueueRunner(self.spool, ScriptedDeliverer(), self.config, self.clock)
        runner.startService()
        self.failureResultOf(runner.ready)
        self.flushLoggedErrors()
        runner.stopService()


class IncomingTests(RunnerTestBase):
    def drop_sendmail_entry(self):
        disk = SpoolDisk(self.directory, clock=self.clock.seconds)
        from gateway.spool.queueid import new_queue_id
        temp = disk.create_temp(new_queue_id(self.clock.seconds()), incoming=True)
        disk.append(temp, [MESSAGE])
        entry = SpoolEntry(temp.queue_id, ENVELOPE, Provenance("127.0.0.1", "localhost", "sendmail"),
                           self.clock.seconds(), "", temp.size)
        return disk.publish(temp, entry, incoming=True)

    def test_sendmail_entry_picked_up_by_periodic_scan(self):
        deliverer = ScriptedDeliverer()
        runner = self.start(deliverer)
        entry = self.drop_sendmail_entry()
        self.assertEqual(deliverer.calls, [])
        self.clock.advance(runner.incoming_interval)
        self.assertEqual([e.queue_id for e in deliverer.calls], [entry.queue_id])
        delivered = deliverer.calls[0]
        self.assertEqual(delivered.provenance.listener, "sendmail")
        self.assertTrue(delivered.message_path.endswith(f"/queue/{entry.queue_id}.msg"))
        self.assertEqual(os.listdir(os.path.join(self.directory, "incoming")), [])
        self.assertTrue(any(m.startswith(f"received {entry.queue_id} via sendmail") for m in self.messages()))

    def test_kick_scans_at_once(self):
        deliverer = ScriptedDeliverer()
        runner = self.start(deliverer)
        self.drop_sendmail_entry()
        runner.kick()
        self.assertEqual(len(deliverer.calls), 1)

    def test_scan_errors_do_not_stop_the_loop(self):
        deliverer = ScriptedDeliverer()
        runner = self.start(deliverer)
        real = self.spool.scan_incoming
        self.spool.scan_incoming = lambda: fail(OSError("transient listing error"))
        self.clock.advance(runner.incoming_interval)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.spool.scan_incoming = real
        self.drop_sendmail_entry()
        self.clock.advance(runner.incoming_interval)
        self.assertEqual(len(deliverer.calls), 1)

    def test_admin_retry_makes_deferred_entry_due_now(self):
        deliverer = ScriptedDeliverer(Transient("down"))
        runner = self.start(deliverer)
        entry = self.accept()
        SpoolDisk(self.directory).request_control(ControlRequest("retry", entry.queue_id))
        runner.kick()
        self.assertEqual(len(deliverer.calls), 2)
        self.assertEqual(self.queued_ids(), [])

    def test_admin_delete(self):
        deliverer = ScriptedDeliverer(Transient("down"))
        runner = self.start(deliverer)
        entry = self.accept()
        SpoolDisk(self.directory).request_control(ControlRequest("delete", entry.queue_id))
        runner.kick()
        self.assertEqual(self.queued_ids(), [])
        self.assertIn(f"deleted {entry.queue_id} by admin request", self.messages())
        self.clock.advance(3600)
        self.assertEqual(len(deliverer.calls), 1)

    def test_admin_delete_while_in_flight(self):
        deliverer = ScriptedDeliverer("wait")
        runner = self.start(deliverer)
        entry = self.accept()
        SpoolDisk(self.directory).request_control(ControlRequest("delete", entry.queue_id))
        runner.kick()
        deliverer.pending[0].callback(Transient("down"))
        self.assertEqual(self.queued_ids(), [])
        self.clock.advance(3600)
        self.assertEqual(len(deliverer.calls), 1)

    def test_admin_requeue_from_failed(self):
        deliverer = ScriptedDeliverer(Permanent("no such mailbox", "5.1.1"), Delivered())
        runner = self.start(deliverer)
        entry = self.accept()
        self.assertEqual(self.queued_ids(), [])
        SpoolDisk(self.directory).request_control(ControlRequest("requeue", entry.queue_id))
        runner.kick()
        self.assertEqual(len(deliverer.calls), 2)
        disk = SpoolDisk(self.directory)
        self.assertEqual(disk.queue_ids(disk.layout.failed), [])
        self.assertEqual(self.queued_ids(), [])
