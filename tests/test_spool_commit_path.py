"""
The accept path's shortcuts (issue 13, CPU per accepted message), each held against the general
way it replaces: the record encoder against records an earlier gateway wrote byte for byte, the
one-construction committed entry against ``attrs.evolve``, and the schedule hint a new record
gets from its own write against the explicit ``set_mtime`` it saves.
"""

from __future__ import annotations

import os
import time

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.spool.accept import _committed_entry
from gateway.spool.entry import AttemptRecord, Envelope, Provenance, SpoolEntry
from gateway.spool.record import _SEALED, _sealed_values, decode_record, encode_record, record_digest, record_fields
from gateway.spool.store import DirectorySpool
from gateway.testing.spool import RecordingFileOps
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool

FULL = SpoolEntry(
    queue_id="0SJ5Q4ZP1A2B3C4D5E6",
    envelope=Envelope("jörg@exämple.com", ("a@example.com", 'b"q@example.com')),
    provenance=Provenance("192.0.2.7", "printer.example", "submission", tls=True, auth_identity="scanner",
                          credential_ref="tenant-b", node="gw1"),
    received_at=1700000000.123456, message_path="/spool/queue/0SJ5Q4ZP1A2B3C4D5E6.msg", size=10240, attempts=2,
    next_attempt_at=1700000900.5,
    history=(AttemptRecord(1700000060.0, "Graph 503 – busy", "service"), AttemptRecord(1700000120.25, "held by admin")),
    sending_mailbox="jörg@exämple.com", message_digest="sha256:" + "0123456789abcdef" * 4, draft_id="AAMk\u00e9=")

#: Written by the encoder before this change (commit ab9ef1c) for FULL: the new one must match.
FULL_RECORD = (
    b'{"format":1,"queue_id":"0SJ5Q4ZP1A2B3C4D5E6","sender":"j\\u00f6rg@ex\\u00e4mple.com",'
    b'"recipients":["a@example.com","b\\"q@example.com"],"received_at":1700000000.123456,'
    b'"client_address":"192.0.2.7","client_name":"printer.example","listener":"submission","tls":true,'
    b'"auth_identity":"scanner","credential_ref":"tenant-b","node":"gw1","size":10240,"attempts":2,'
    b'"next_attempt_at":1700000900.5,"history":[{"at":1700000060.0,"reason":"Graph 503 \\u2013 busy",'
    b'"cause":"service"},{"at":1700000120.25,"reason":"held by admin"}],'
    b'"sending_mailbox":"j\\u00f6rg@ex\\u00e4mple.com",'
    b'"message_digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",'
    b'"draft_id":"AAMk\\u00e9=",'
    b'"record_digest":"sha256:8d56c506dc23cb7e8159673cdb9c18f97670c8f2736b9f09160b86f3e2b5632f"}')

BARE = SpoolEntry(queue_id="0SJ5Q4ZP1A2B3C4D5E7", envelope=Envelope("", ("a@example.com",)),
                  provenance=Provenance("127.0.0.1", "localhost", "sendmail"), received_at=1700000000.0,
                  message_path="/m", size=0)
BARE_RECORD = (
    b'{"format":1,"queue_id":"0SJ5Q4ZP1A2B3C4D5E7","sender":"","recipients":["a@example.com"],'
    b'"received_at":1700000000.0,"client_address":"127.0.0.1","client_name":"localhost","listener":"sendmail",'
    b'"tls":false,"auth_identity":null,"credential_ref":null,"node":null,"size":0,"attempts":0,'
    b'"next_attempt_at":0.0,"history":[],"sending_mailbox":null,"message_digest":null,"draft_id":null,'
    b'"record_digest":"sha256:210f9c693d7e29d05e6924cd051b203cef5eacaeeca31c92129081531741ef40"}')

#: A record from before node, the intake decisions and the record digest existed.
OLDEST_RECORD = (
    b'{"format": 1, "queue_id": "0SJ5Q4ZP1A2B3C4D5E8", "sender": "app@example.com", '
    b'"recipients": ["a@example.com"], "received_at": 1700000000, "client_address": "192.0.2.7", '
    b'"client_name": "printer.example", "listener": "default", "tls": false, "auth_identity": null, '
    b'"credential_ref": null, "size": 5, "attempts": 1, "next_attempt_at": 1700000300, '
    b'"history": [{"at": 1700000000.5, "reason": "Graph 503"}]}')

MESSAGE = b"Subject: test\r\n\r\nHello\r\n"


class RecordEncodingTests(SynchronousTestCase):
    def test_records_are_byte_for_byte_what_the_previous_encoder_wrote(self) -> None:
        self.assertEqual(encode_record(FULL), FULL_RECORD)
        self.assertEqual(encode_record(BARE), BARE_RECORD)

    def test_written_records_decode_to_the_entry(self) -> None:
        self.assertEqual(decode_record(encode_record(FULL), FULL.message_path), FULL)
        self.assertEqual(decode_record(encode_record(BARE), BARE.message_path), BARE)

    def test_oldest_records_still_decode(self) -> None:
        entry = decode_record(OLDEST_RECORD, "/q/0SJ5Q4ZP1A2B3C4D5E8.msg")
        self.assertEqual((entry.provenance.node, entry.sending_mailbox, entry.message_digest, entry.draft_id),
                         (None, None, None, None))
        self.assertEqual((entry.received_at, entry.next_attempt_at, entry.history[0].cause),
                         (1700000000.0, 1700000300.0, None))
        self.assertEqual(decode_record(encode_record(entry), entry.message_path), entry)

    def test_sealed_values_follow_the_sealed_field_order(self) -> None:
        """The digest's value list is built directly; it must be the sealed fields' values in order."""
        fields = record_fields(FULL)
        self.assertEqual(_sealed_values(FULL), [fields[name] for name in _SEALED])

    def test_digest_covers_every_sealed_field(self) -> None:
        changed = [
            attrs.evolve(FULL, queue_id="0SJ5Q4ZP1A2B3C4D5E9"),
            attrs.evolve(FULL, envelope=Envelope("x@example.com", FULL.envelope.recipients)),
            attrs.evolve(FULL, envelope=Envelope(FULL.envelope.sender, ("a@example.com",))),
            attrs.evolve(FULL, size=10241), attrs.evolve(FULL, sending_mailbox="a@example.com"),
            attrs.evolve(FULL, message_digest="sha256:00"),
        ] + [attrs.evolve(FULL, provenance=attrs.evolve(FULL.provenance, **{name: value}))
             for name, value in (("client_address", "192.0.2.8"), ("client_name", "other"), ("listener", "x"),
                                 ("tls", False), ("auth_identity", None), ("credential_ref", None), ("node", "gw2"))]
        digests = {record_digest(entry) for entry in changed}
        self.assertEqual(len(digests), len(changed))
        self.assertNotIn(record_digest(FULL), digests)


class CommittedEntryTests(SynchronousTestCase):
    def test_same_as_evolve(self) -> None:
        history = FULL.history + (AttemptRecord(1.0, "held by admin"),)
        self.assertEqual(_committed_entry(FULL, history, "/q/x.msg", 7, "sha256:ff"),
                         attrs.evolve(FULL, history=history, message_path="/q/x.msg", size=7, message_digest="sha256:ff"))

    def test_names_every_field_of_the_entry(self) -> None:
        """A field added to SpoolEntry must be copied by _committed_entry too (else it is lost at commit)."""
        self.assertEqual(
            [a.name for a in attrs.fields(SpoolEntry)],
            ["queue_id", "envelope", "provenance", "received_at", "message_path", "size", "attempts",
             "next_attempt_at", "history", "sending_mailbox", "message_digest", "draft_id"],
            "SpoolEntry's fields changed: update gateway.spool.accept._committed_entry and this list")


class WallClockReactor(ImmediateReactor):
    """The daemon's clock: C{seconds} is C{time.time} itself, as on the real reactor."""

    seconds = staticmethod(time.time)  # type: ignore[assignment]


class ScheduleHintTests(SynchronousTestCase):
    """
    The record's mtime is the schedule hint start-up reads (package docstring): a new entry is
    due now, and must read as due at the next start-up, in the spool's clock.
    """

    def make_spool(self, reactor: ImmediateReactor, ops: RecordingFileOps, **kwargs) -> DirectorySpool:
        self.directory = os.path.abspath(self.mktemp())
        spool = DirectorySpool(self.directory, SynchronousThreadPool(), reactor, fileops=ops, **kwargs)
        self.addCleanup(spool.close)
        return spool

    def accept(self, spool: DirectorySpool) -> SpoolEntry:
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        return self.successResultOf(writer.commit(Envelope("a@example.com", ("b@example.com",)),
                                                  Provenance("192.0.2.7", "client.example", "default")))

    def record_mtime(self, entry: SpoolEntry, where: str = "queue") -> float:
        return os.stat(os.path.join(self.directory, where, entry.queue_id + ".env")).st_mtime

    def test_wall_clock_new_entry_keeps_its_write_time_and_is_due_after_a_restart(self) -> None:
        ops = SetMtimeRecorder()
        spool = self.make_spool(WallClockReactor(), ops)
        entry = self.accept(spool)
        self.assertEqual(ops.mtimes, [])  # the syscall saved
        mtime = self.record_mtime(entry)
        # The kernel stamps with its coarse clock: allow it a tick behind received_at.
        self.assertLessEqual(entry.received_at - 1, mtime)
        self.assertLessEqual(mtime, time.time())
        spool.close()
        restarted = self.make_spool_at(self.directory, WallClockReactor())
        schedule = self.successResultOf(restarted.recover_schedule())
        self.assertEqual([queue_id for _, queue_id in schedule], [entry.queue_id])
        self.assertLessEqual(schedule[0][0], time.time())  # due now

    def make_spool_at(self, directory: str, reactor: ImmediateReactor) -> DirectorySpool:
        spool = DirectorySpool(directory, SynchronousThreadPool(), reactor)
        self.addCleanup(spool.close)
        return spool

    def test_test_clock_gets_the_hint_set_in_its_own_time(self) -> None:
        """Under another clock the write time means nothing: the hint is set to received_at."""
        reactor = ImmediateReactor()
        reactor.advance(1_600_000_000)
        ops = SetMtimeRecorder()
        entry = self.accept(self.make_spool(reactor, ops))
        self.assertEqual(ops.mtimes, [1_600_000_000.0])
        self.assertEqual(self.record_mtime(entry), 1_600_000_000.0)

    def test_held_new_entry_with_wall_clock(self) -> None:
        ops = SetMtimeRecorder()
        spool = self.make_spool(WallClockReactor(), ops, hold_new=True)
        entry = self.accept(spool)
        self.assertEqual(ops.mtimes, [])
        self.assertEqual(entry.history[-1].reason, "held by admin")
        self.assertLessEqual(self.record_mtime(entry, "held"), time.time())

    def test_entry_due_later_gets_its_hint_with_wall_clock(self) -> None:
        """An entry committed with a next attempt (adopted from another node) still sets it."""
        directory = os.path.abspath(self.mktemp())
        spool = self.make_spool_at(directory, WallClockReactor())
        later = float(int(time.time()) + 3600)
        disk = spool.disk
        disk.ensure_directories()
        temp = disk.create_temp("0SJ5Q4ZP1A2B3C4D5EA")
        disk.append(temp, [MESSAGE])
        entry = SpoolEntry(queue_id="0SJ5Q4ZP1A2B3C4D5EA", envelope=Envelope("a@example.com", ("b@example.com",)),
                           provenance=Provenance("192.0.2.7", "client.example", "default"), received_at=time.time(),
                           message_path="", size=0, attempts=1, next_attempt_at=later)
        disk.publish(temp, entry)
        self.assertEqual(os.stat(os.path.join(directory, "queue", entry.queue_id + ".env")).st_mtime, later)


class SetMtimeRecorder(RecordingFileOps):
    def __init__(self) -> None:
        super().__init__()
        self.mtimes: list[float] = []

    def set_mtime(self, fd: int, when: float) -> None:
        super().set_mtime(fd, when)
        self.mtimes.append(when)


class ProvenanceAtNodeTests(SynchronousTestCase):
    def test_same_as_evolve(self) -> None:
        provenance = Provenance("192.0.2.7", "printer.example", "submission", tls=True, auth_identity="scanner",
                                credential_ref="tenant-b")
        self.assertEqual(provenance.at_node("gw2"), attrs.evolve(provenance, node="gw2"))

    def test_names_every_field_of_the_provenance(self) -> None:
        """A field added to Provenance must be copied by at_node too (else intake drops it)."""
        self.assertEqual(
            [a.name for a in attrs.fields(Provenance)],
            ["client_address", "client_name", "listener", "tls", "auth_identity", "credential_ref", "node"],
            "Provenance's fields changed: update Provenance.at_node and this list")
