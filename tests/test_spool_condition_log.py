"""
Issue 10, quiet disk trouble: ENOSPC (or any other identical spool error) during a state change
used to log a CRITICAL traceback for every message and every attempt.  Now the spool logs the
condition once, counts repeats (with a periodic summary), says when it clears and how many
state changes it affected — and every message stays queued, none is lost.
"""

from __future__ import annotations

import errno

from twisted.logger import LogLevel

from gateway.delivery.interfaces import Transient
from gateway.spool.conditions import RepeatedErrors
from gateway.spool.fileops import FileOps
from gateway.testing.delivery import ScriptedDeliverer
from gateway.testing.spool import FullDiskFileOps
from tests.test_queue_runner import START, RunnerTestBase


class DiskFullDuringStateChangesTests(RunnerTestBase):
    def loud(self):
        return [e for e in self.events if e["log_level"] in (LogLevel.critical, LogLevel.error)]

    def test_enospc_logged_once_per_condition_and_nothing_lost(self):
        deliverer = ScriptedDeliverer()
        deliverer.default = Transient("Graph 503")
        ids = [self.accept().queue_id for _ in range(5)]  # accepted while the runner is down
        self.spool.disk.ops = FullDiskFileOps(budget=0)
        self.start(deliverer)
        # Every message is tried twice within the first summary interval (at 0 and 60 s) and no
        # deferral is recorded: one line for the condition, no traceback.
        self.clock.advance(60)
        self.assertEqual(len(deliverer.calls), 10)
        loud = self.loud()
        self.assertEqual(len(loud), 1, [e.get("log_format") for e in loud])
        self.assertEqual(loud[0]["log_level"], LogLevel.critical)
        self.assertNotIn("log_failure", loud[0])  # no traceback for a full disk
        self.assertIn("No space left on device", self.messages()[self.events.index(loud[0])])
        # The runner remembers the failures it could not record, so the backoff still grows:
        # the third try is at 360 s.
        self.clock.advance(300)
        self.assertEqual(len(deliverer.calls), 15)
        # Nothing lost: every message is still queued, its record as before.
        self.assertEqual(sorted(self.queued_ids()), sorted(ids))
        # The disk clears: one line saying so, with how many state changes failed meanwhile.
        self.spool.disk.ops = FileOps()
        self.clock.advance(900)
        cleared = [m for m in self.messages() if "work again" in m]
        self.assertEqual(len(cleared), 1, self.messages())
        self.assertIn("15", cleared[0])
        # The first state change that works records every failed attempt, the unrecorded ones too.
        self.assertEqual(self.record(ids[0]).attempts, 4)

    def test_delivered_but_not_removable_is_logged_once_and_stays_queued(self):
        deliverer = ScriptedDeliverer()
        ids = [self.accept().queue_id for _ in range(3)]
        ops = FileOps()
        ops.unlink = _fail_unlink
        self.spool.disk.ops = ops
        self.start(deliverer)
        self.assertEqual(len(deliverer.calls), 3)
        self.assertEqual(len(self.loud()), 1, self.messages())
        self.assertEqual(sorted(self.queued_ids()), sorted(ids))


def _fail_unlink(path):
    raise OSError(errno.EROFS, "Read-only file system")


class RepeatedErrorsTests(RunnerTestBase):
    def test_periodic_summary_while_the_condition_lasts(self):
        conditions = RepeatedErrors(self.clock, summary_interval=300.0)
        for _ in range(10):
            conditions.failed("update", errno.ENOSPC, "spool could not write the record of X: No space left on device")
            self.clock.advance(60)
        texts = self.messages()
        self.assertEqual(sum("No space left on device" in t for t in texts), 1 + 1)  # first + one summary
        self.assertTrue(any("still" in t and "times" in t for t in texts), texts)
        conditions.succeeded("update")
        conditions.succeeded("update")
        self.assertEqual(sum("work again" in t for t in self.messages()), 1)
        self.assertEqual(START + 600, self.clock.seconds())
