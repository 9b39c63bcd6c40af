"""
``graphsmtp-queue adopt DIR``: a dead gateway's spool (a restored disk) is taken over by this
node's spool without loss or duplicate, also when an earlier run stopped half-way.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import queue as queue_cli
from gateway.cli.adopt import _copy_in
from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance
from gateway.testing.spool import make_test_spool
from gateway.testing.threads import ImmediateReactor


def message(n: int) -> bytes:
    return f"Subject: adopted {n}\r\nFrom: app@example.com\r\n\r\nbody {n}\r\n".encode()


class AdoptTests(SynchronousTestCase):
    def setUp(self):
        self.clock = ImmediateReactor()
        self.clock.advance(1_700_000_000)
        self.dead = os.path.abspath(self.mktemp())
        self.here = os.path.abspath(self.mktemp())
        dead = self.spool(self.dead)
        self.ids = [self.accept(dead, n) for n in range(4)]
        held = self.ids[3]
        dead.disk.hold(held)
        dead.close()  # the dead node: nothing runs on its spool any more
        mine = self.spool(self.here)
        self.mine = self.accept(mine, 99)
        mine.close()  # this node's daemon is stopped (offline adopt); see the last test for a running one

    def spool(self, directory):
        spool = make_test_spool(directory, self.clock)
        self.successResultOf(spool.recover_schedule())
        return spool

    def accept(self, spool, n):
        writer = self.successResultOf(spool.open_writer())
        writer.write(message(n))
        entry = self.successResultOf(writer.commit(
            Envelope("app@example.com", (f"r{n}@example.com",)), Provenance("192.0.2.9", "printer.example", "mx")))
        return entry.queue_id

    def adopt(self):
        self.lines: list[str] = []
        return queue_cli.main(["--spool", self.here, "--wait", "0", "adopt", self.dead], environ={},
                              out=self.lines.append)

    def test_every_entry_moves_over_once_with_its_id_envelope_and_digest(self):
        before = {q: SpoolDisk(self.dead).load(q, SpoolDisk(self.dead).layout.queue) for q in self.ids[:3]}
        self.assertEqual(self.adopt(), 0, self.lines)
        here = SpoolDisk(self.here)
        self.assertEqual(sorted(here.queue_ids()), sorted(self.ids[:3] + [self.mine]))
        self.assertEqual(here.queue_ids(here.layout.held), [self.ids[3]], "a held entry stays held")
        for queue_id, old in before.items():
            new = here.load(queue_id)
            self.assertEqual((new.envelope, new.provenance, new.message_digest, new.received_at),
                             (old.envelope, old.provenance, old.message_digest, old.received_at))
            with open(new.message_path, "rb") as f:
                self.assertEqual(f.read(), message(self.ids.index(queue_id)))
        dead = SpoolDisk(self.dead)
        self.assertEqual(dead.queue_ids(), [])
        self.assertEqual(dead.queue_ids(dead.layout.held), [])
        self.assertIn("adopted 4 message(s)", "\n".join(self.lines))
        # Running it again adopts nothing twice.
        self.assertEqual(self.adopt(), 0)
        self.assertEqual(sorted(SpoolDisk(self.here).queue_ids()), sorted(self.ids[:3] + [self.mine]))
        self.assertIn("adopted 0 message(s)", "\n".join(self.lines))

    def test_a_run_that_stopped_half_way_neither_loses_nor_duplicates(self):
        dead = SpoolDisk(self.dead)
        here = SpoolDisk(self.here)
        # A crash after an entry was copied here but before the dead spool's copy was set aside.
        _copy_in(here, dead.load(self.ids[0]))
        self.assertEqual(self.adopt(), 0, self.lines)
        self.assertIn("1 were already here", "\n".join(self.lines))
        self.assertEqual(sorted(here.queue_ids()), sorted(self.ids[:3] + [self.mine]))
        self.assertEqual(dead.queue_ids(), [])

    def test_a_spool_still_in_use_is_refused(self):
        live = make_test_spool(self.dead, self.clock)
        self.successResultOf(live.recover_schedule())
        self.addCleanup(live.close)
        self.assertEqual(self.adopt(), 75)
        self.assertIn("still runs", "\n".join(self.lines))
        self.assertEqual(len(SpoolDisk(self.here).queue_ids()), 1)

    def test_its_own_spool_is_refused(self):
        self.lines = []
        status = queue_cli.main(["--spool", self.here, "adopt", self.here], environ={}, out=self.lines.append)
        self.assertEqual(status, 64)

    def test_a_running_daemon_is_asked_to_schedule_what_was_adopted(self):
        daemon = self.spool(self.here)
        self.addCleanup(daemon.close)
        self.assertEqual(self.adopt(), 0, self.lines)
        incoming = sorted(os.listdir(SpoolDisk(self.here).layout.incoming))
        self.assertEqual(incoming, sorted([f"retry-{q}.ctl" for q in self.ids[:3]] + [f"hold-{self.ids[3]}.ctl"]))
        scan = self.successResultOf(daemon.scan_incoming())
        self.assertEqual(sorted((r.action, r.target) for r in scan.requests),
                         sorted([("retry", q) for q in self.ids[:3]] + [("hold", self.ids[3])]))

    def test_same_id_with_other_content_is_left_in_place_and_reported(self):
        import attrs

        dead = SpoolDisk(self.dead)
        here = SpoolDisk(self.here)
        other = attrs.evolve(dead.load(self.ids[0]), message_digest="sha256:" + "0" * 64)
        _copy_in(here, other)
        self.assertEqual(self.adopt(), 65, self.lines)
        self.assertIn(f"1 queue id(s) exist here with different content and were left in {self.dead}: {self.ids[0]}",
                      "\n".join(self.lines))
        self.assertEqual(dead.queue_ids(), [self.ids[0]])
        self.assertEqual(here.load(self.ids[0]).message_digest, other.message_digest)

    def test_a_directory_without_a_spool_is_refused(self):
        self.lines = []
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        status = queue_cli.main(["--spool", self.here, "adopt", empty], environ={}, out=self.lines.append)
        self.assertEqual(status, 66)
        self.assertEqual(self.lines, [f"graphsmtp-queue: adopt: no spool at {empty} (no queue/ directory)"])
