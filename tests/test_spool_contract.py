"""
The ISpool contract, run against the real DirectorySpool and the MemorySpool fake, so the fake
other components test with behaves like the real thing where it matters.
"""

from __future__ import annotations

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.spool.entry import Envelope, Provenance
from gateway.spool.interfaces import ISpool, ISpoolWriter, SpoolError
from gateway.testing.memory_spool import MemorySpool
from gateway.testing.spool import make_test_spool

ENVELOPE = Envelope("s@example.com", ("r1@example.com", "r2@example.com"))
PROVENANCE = Provenance("192.0.2.1", "c.example", "default")
MESSAGE = b"Subject: contract\r\nX-A: 1\r\n\r\nbody\r\n"


class SpoolContractMixin:
    def make_spool(self):
        raise NotImplementedError

    def stored_bytes(self, spool, entry) -> bytes:
        raise NotImplementedError

    def commit(self, spool, data=MESSAGE, header_section=None):
        writer = self.successResultOf(spool.open_writer())
        verifyObject(ISpoolWriter, writer)
        writer.write(data)
        return self.successResultOf(writer.commit(ENVELOPE, PROVENANCE, header_section=header_section))

    def test_provides_ispool(self):
        verifyObject(ISpool, self.make_spool())

    def test_commit_keeps_envelope_and_bytes(self):
        spool = self.make_spool()
        entry = self.commit(spool)
        self.assertEqual(entry.envelope, ENVELOPE)
        self.assertEqual(entry.provenance, PROVENANCE)
        self.assertEqual(entry.size, len(MESSAGE))
        self.assertEqual(self.stored_bytes(spool, entry), MESSAGE)

    def test_header_section_replaced(self):
        spool = self.make_spool()
        entry = self.commit(spool, header_section=b"Subject: new\r\n\r\n")
        self.assertEqual(self.stored_bytes(spool, entry), b"Subject: new\r\n\r\nbody\r\n")

    def test_recover_lists_committed_and_remove_forgets(self):
        spool = self.make_spool()
        a, b = self.commit(spool), self.commit(spool)
        self.assertEqual({e.queue_id for e in self.successResultOf(spool.recover())}, {a.queue_id, b.queue_id})
        self.successResultOf(spool.remove(a))
        self.assertEqual([e.queue_id for e in self.successResultOf(spool.recover())], [b.queue_id])
        self.failureResultOf(spool.load(a.queue_id), KeyError)

    def test_flush_then_temp_path_readable(self):
        spool = self.make_spool()
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        self.successResultOf(writer.flush())
        with open(writer.temp_path, "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.successResultOf(writer.abort())

    def test_update_returns_entry(self):
        spool = self.make_spool()
        entry = self.commit(spool)
        newer = attrs.evolve(entry, attempts=1)
        self.assertEqual(self.successResultOf(spool.update(newer)), newer)


class DirectorySpoolContractTests(SpoolContractMixin, SynchronousTestCase):
    def make_spool(self):
        spool = make_test_spool(os.path.abspath(self.mktemp()))
        self.addCleanup(spool.close)
        return spool

    def stored_bytes(self, spool, entry):
        with open(entry.message_path, "rb") as f:
            return f.read()


class MemorySpoolContractTests(SpoolContractMixin, SynchronousTestCase):
    def make_spool(self):
        return MemorySpool()

    def stored_bytes(self, spool, entry):
        return dict((e.queue_id, data) for e, data in spool.messages)[entry.queue_id]

    def test_failure_injection(self):
        spool = MemorySpool(fail_with=SpoolError("full", out_of_space=True))
        writer = self.successResultOf(spool.open_writer())
        self.assertTrue(self.failureResultOf(writer.commit(ENVELOPE, PROVENANCE), SpoolError).value.out_of_space)
