"""
graphsmtp-queue hold/release (issue 12 item 4) on a real spool: offline (tool holds the lock)
and through a queue runner owning the spool (control requests), a held message is never
attempted and never expires; interrupted hold/release moves are completed at recovery.
"""

from __future__ import annotations

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import queue as queue_cli
from gateway.config.model import QueueConfig
from gateway.delivery.interfaces import Transient
from gateway.queue.runner import QueueRunner
from gateway.spool.disk import ControlRequest, SpoolDisk
from gateway.spool.entry import Envelope, Provenance
from gateway.testing.delivery import ScriptedDeliverer
from gateway.testing.spool import make_test_spool
from gateway.testing.threads import ImmediateReactor

MESSAGE = b"Subject: s\r\nFrom: app@example.com\r\n\r\nbody\r\n"
START = 1_700_000_000
HOUR = 3600.0


class HoldTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.clock = ImmediateReactor()
        self.clock.advance(START)
        self.spool = make_test_spool(self.directory, self.clock)
        self.addCleanup(self.spool.close)
        self.successResultOf(self.spool.recover_schedule())
        self.disk = SpoolDisk(self.directory)

    def accept(self, sender="app@example.com", mailbox=None, recipients=("a@example.com",)):
        writer = self.successResultOf(self.spool.open_writer())
        writer.write(MESSAGE)
        entry = self.successResultOf(writer.commit(Envelope(sender, recipients), Provenance("192.0.2.9", "p", "default")))
        if mailbox:
            entry = self.successResultOf(self.spool.update(attrs.evolve(entry, sending_mailbox=mailbox)))
        return entry

    def run_tool(self, *args):
        self.lines = []
        return queue_cli.main(["--spool", self.directory, "--wait", "0", *args], environ={}, out=self.lines.append)

    def start_runner(self, deliverer, **config):
        runner = QueueRunner(self.spool, deliverer, QueueConfig(retry_schedule=(HOUR,), jitter=0.0, **config), self.clock)
        runner.startService()
        self.addCleanup(runner.stopService)
        return runner

    def held_ids(self):
        return self.disk.queue_ids(self.disk.layout.held)

    def test_offline_hold_and_release(self):
        entry = self.accept()
        self.spool.close()
        self.assertEqual(self.run_tool("hold", entry.queue_id), 0)
        self.assertEqual(self.held_ids(), [entry.queue_id])
        self.assertEqual(self.disk.queue_ids(), [])
        self.assertEqual(self.run_tool("list"), 0)
        row = next(line for line in self.lines if line.startswith(entry.queue_id))
        self.assertIn("held", row)
        self.assertEqual(self.run_tool("release", entry.queue_id), 0)
        self.assertEqual(self.held_ids(), [])
        self.assertEqual(self.disk.queue_ids(), [entry.queue_id])
        self.assertEqual(self.run_tool("release", entry.queue_id), queue_cli.EX_NOTFOUND)

    def test_hold_through_the_running_daemon_is_never_attempted(self):
        deliverer = ScriptedDeliverer(Transient("Graph 503"))
        runner = self.start_runner(deliverer)
        entry = self.accept()
        other = self.accept()
        self.assertEqual(len(deliverer.calls), 2)  # entry deferred for an hour, other delivered
        self.assertEqual(self.run_tool("hold", entry.queue_id), 0)
        self.assertIn(entry.queue_id, self.disk.queue_ids())  # the tool never touches a daemon's queue
        runner.kick()
        self.assertEqual(self.held_ids(), [entry.queue_id])
        self.assertEqual(self.disk.queue_ids(), [])
        # flush and the retry time passing do not attempt it; a later hold's runner knows nothing of it
        self.assertEqual(self.run_tool("flush"), 0)
        runner.kick()
        self.clock.advance(2 * HOUR)
        self.assertEqual([e.queue_id for e in deliverer.calls], [entry.queue_id, other.queue_id])
        record = self.disk.load(entry.queue_id, directory=self.disk.layout.held)
        self.assertEqual(record.attempts, 1)
        self.assertEqual(record.history[-1].reason, "held by admin")

    def test_held_message_does_not_expire_and_release_keeps_the_schedule(self):
        deliverer = ScriptedDeliverer(Transient("Graph 503"), Transient("Graph 503 again"))
        runner = self.start_runner(deliverer, max_lifetime=5 * HOUR)
        entry = self.accept()
        self.assertEqual(self.run_tool("hold", entry.queue_id), 0)
        runner.kick()
        self.clock.advance(10 * HOUR)  # twice the queue lifetime, on hold
        self.assertEqual(self.run_tool("release", entry.queue_id), 0)
        runner.kick()
        self.assertEqual(self.disk.queue_ids(), [entry.queue_id])
        # It was due an hour after its first attempt, long past: attempted at once, and not
        # expired (the time held does not count) but deferred again.
        self.assertEqual(len(deliverer.calls), 2)
        self.assertEqual(deliverer.calls[1].received_at, entry.received_at + 10 * HOUR)
        again = self.disk.load(entry.queue_id)
        self.assertEqual(again.attempts, 2)
        self.assertIn("released by admin after 36000s on hold", again.history[-2].reason)
        self.assertEqual(self.disk.queue_ids(self.disk.layout.failed), [])

    def test_hold_in_flight_is_held_once_the_attempt_is_recorded(self):
        deliverer = ScriptedDeliverer("wait")
        runner = self.start_runner(deliverer)
        entry = self.accept()
        self.assertEqual(self.run_tool("hold", "--all"), 0)
        runner.kick()
        self.assertEqual(self.held_ids(), [])  # still being delivered
        deliverer.pending[0].callback(Transient("Graph 503"))
        self.assertEqual(self.held_ids(), [entry.queue_id])
        self.assertEqual(self.disk.load(entry.queue_id, directory=self.disk.layout.held).attempts, 1)
        self.clock.advance(2 * HOUR)
        self.assertEqual(len(deliverer.calls), 1)

    def test_release_before_an_in_flight_hold_took_effect_cancels_it(self):
        deliverer = ScriptedDeliverer("wait")
        deliverer.default = Transient("down")
        runner = self.start_runner(deliverer)
        entry = self.accept()
        self.assertEqual(self.run_tool("hold", entry.queue_id), 0)
        runner.kick()
        self.assertEqual(self.run_tool("release", "--all"), 0)
        runner.kick()
        deliverer.pending[0].callback(Transient("Graph 503"))
        self.assertEqual(self.held_ids(), [])
        self.assertEqual(self.disk.queue_ids(), [entry.queue_id])

    def test_hold_and_release_by_mailbox(self):
        deliverer = ScriptedDeliverer()
        deliverer.default = Transient("down")
        runner = self.start_runner(deliverer)
        a = self.accept(mailbox="printer@corp.example")
        b = self.accept(sender="x@corp.example", mailbox="Printer@corp.example")
        c = self.accept(mailbox="other@corp.example")
        self.assertEqual(self.run_tool("hold", "--mailbox", "printer@corp.example"), 0)
        runner.kick()
        self.assertEqual(self.held_ids(), sorted([a.queue_id, b.queue_id]))
        self.assertEqual(self.disk.queue_ids(), [c.queue_id])
        self.assertEqual(self.run_tool("hold", "--mailbox", "nobody@corp.example"), queue_cli.EX_NOTFOUND)
        self.assertEqual(self.run_tool("release", "--all"), 0)
        runner.kick()
        self.assertEqual(self.held_ids(), [])
        self.assertEqual(self.disk.queue_ids(), sorted([a.queue_id, b.queue_id, c.queue_id]))

    def test_control_requests_for_hold(self):
        self.assertEqual(ControlRequest.from_file_name("hold-all.ctl"), ControlRequest("hold", "all"))
        self.assertEqual(ControlRequest.from_file_name("release-all.ctl"), ControlRequest("release", "all"))
        self.assertIsNone(ControlRequest.from_file_name("delete-all.ctl"))
        self.assertIsNone(ControlRequest.from_file_name("hold-../x.ctl"))


class HoldRecoveryTests(SynchronousTestCase):
    """A crash in the middle of a hold or a release loses nothing and leaves no double."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.clock = ImmediateReactor()
        self.clock.advance(START)
        spool = make_test_spool(self.directory, self.clock)
        self.successResultOf(spool.recover_schedule())
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        self.entry = self.successResultOf(writer.commit(Envelope("a@example.com", ("b@example.com",)),
                                                        Provenance("192.0.2.1", "c", "default")))
        spool.close()
        self.disk = SpoolDisk(self.directory)
        self.q = self.disk.layout.queue
        self.h = self.disk.layout.held

    def recover(self):
        spool = make_test_spool(self.directory, self.clock)
        self.addCleanup(spool.close)
        return [queue_id for _, queue_id in self.successResultOf(spool.recover_schedule())]

    def test_hold_interrupted_after_moving_the_message(self):
        qid = self.entry.queue_id
        os.rename(os.path.join(self.q, qid + ".msg"), os.path.join(self.h, qid + ".msg"))
        self.assertEqual(self.recover(), [])
        self.assertEqual(self.disk.queue_ids(self.h), [qid])
        self.assertEqual(self.disk.load(qid, directory=self.h).size, self.entry.size)

    def test_release_interrupted_after_moving_the_message(self):
        qid = self.entry.queue_id
        self.disk.hold(qid)
        os.rename(os.path.join(self.h, qid + ".msg"), os.path.join(self.q, qid + ".msg"))
        self.assertEqual(self.recover(), [])
        self.assertEqual(self.disk.queue_ids(self.h), [qid])
        self.assertTrue(os.path.exists(os.path.join(self.h, qid + ".msg")))

    def test_release_interrupted_before_clearing_held(self):
        qid = self.entry.queue_id
        held = self.disk.hold(qid)
        released = self.disk.release(qid)
        self.disk.write_record(released)  # as if the held record's unlink had not happened:
        with open(os.path.join(self.h, qid + ".env"), "wb") as f:
            from gateway.spool.record import encode_record
            f.write(encode_record(held))
        self.assertEqual(self.recover(), [qid])
        self.assertEqual(os.listdir(self.h), [])

