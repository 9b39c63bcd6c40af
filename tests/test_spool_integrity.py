"""
Issue 10, integrity: the spool records a digest of every message file ("sha256:<hex>"),
computed while the message streams to disk (SMTP intake and the sendmail drop box alike);
the Graph deliverer verifies it before each send.  A file changed in place with the same
length (which the size check cannot see) is quarantined with one CRITICAL line and never sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from gateway.delivery.graph.deliverer import INLINE_PREPARE_LIMIT
from gateway.delivery.interfaces import IDraftJournal, IEntryQuarantine, Transient
from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.harness import start_gateway
from gateway.testing.logs import LogCapture
from tests.graph_helpers import (
    make_entry,
    simple_message,
    start_rig,
    write_message,
)
from tests.test_spool_store import ENVELOPE, PROVENANCE, SpoolTestMixin

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def corrupt_in_place(path: str) -> None:
    """Same length, different bytes: what a bad disk block or a stray editor does."""
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(len(data) - 8)
        f.write(b"GARBLED!")


class IntakeDigestTests(SpoolTestMixin, SynchronousTestCase):
    def test_small_message_digest_in_record(self):
        spool = self.make_spool()
        entry = self.accept(spool)
        self.assertEqual(entry.message_digest, sha256_of(entry.message_path))
        record = json.loads(self.read(os.path.join(self.directory, "queue", entry.queue_id + ".env")))
        self.assertEqual(record["message_digest"], entry.message_digest)

    def test_streamed_message_digest(self):
        spool = self.make_spool(chunk_size=1024, high_water=4096, low_water=1024)
        writer = self.successResultOf(spool.open_writer())
        writer.write(b"Subject: big\r\n\r\n")
        for _i in range(200):
            writer.write(os.urandom(700))
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        self.assertEqual(entry.message_digest, sha256_of(entry.message_path))

    def test_streamed_message_with_edited_header_section(self):
        spool = self.make_spool(chunk_size=1024, high_water=4096, low_water=1024)
        for new_header in (b"Subject: edited, longer than before\r\n\r\n", b"Subject: BIG\r\n\r\n"):
            writer = self.successResultOf(spool.open_writer())
            writer.write(b"Subject: big\r\n\r\n")
            for _i in range(20):
                writer.write(os.urandom(700))
            entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE, header_section=new_header))
            self.assertTrue(self.read(entry.message_path).startswith(new_header))
            self.assertEqual(entry.message_digest, sha256_of(entry.message_path))

    def test_sendmail_drop_box_entry_carries_the_digest_into_the_queue(self):
        root = os.path.abspath(self.mktemp())
        disk = SpoolDisk(root)
        disk.ensure_directories()
        temp = disk.create_temp("0SJ5Q4ZP1A2B3C4D5E6", incoming=True)
        disk.append(temp, [b"Subject: cron\r\n\r\n", b"output\r\n"])
        entry = SpoolEntry("0SJ5Q4ZP1A2B3C4D5E6", ENVELOPE, PROVENANCE, 1.0, "", temp.size)
        published = disk.publish(temp, entry, incoming=True)
        self.assertEqual(published.message_digest, sha256_of(published.message_path))
        [imported] = disk.scan_incoming().entries
        self.assertEqual(imported.message_digest, sha256_of(imported.message_path))


@implementer(IDraftJournal, IEntryQuarantine)
class RecordingJournal:
    def __init__(self):
        self.quarantined = []
        self.drafts = {}

    def note_draft(self, entry, draft_id):
        self.drafts[entry.queue_id] = draft_id
        return succeed(None)

    def draft_of(self, entry):
        return self.drafts.get(entry.queue_id, entry.draft_id)

    def quarantine(self, entry, reason):
        self.quarantined.append((entry.queue_id, reason))
        return succeed("quarantine/" + entry.queue_id)


class VerifyBeforeSendTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_same_length_corruption_is_quarantined_with_one_alarm(self):
        logs = LogCapture.install(self)
        r = yield start_rig(self, reactor)
        journal = RecordingJournal()
        r.deliverer.journal = journal
        path = write_message(r.directory, simple_message(to=[BOB]), "m.eml")
        entry = make_entry(path, ALICE, [BOB])
        entry = attrs.evolve(entry, message_digest=sha256_of(path))
        corrupt_in_place(path)
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Transient)
        again = yield r.deliverer.deliver(entry)
        self.assertIsInstance(again, Transient)
        self.assertEqual(r.server.sent, [])
        self.assertNotIn("sendMail", r.server.operations())
        self.assertEqual([q for q, _ in journal.quarantined], [entry.queue_id, entry.queue_id])
        critical = [e for e in logs.events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1, logs.messages())
        self.assertIn(entry.queue_id, logs.messages()[logs.events.index(critical[0])])

    @inlineCallbacks
    def test_intact_message_is_sent(self):
        r = yield start_rig(self, reactor)
        entry = r.entry(simple_message(to=[BOB]), ALICE, [BOB])
        entry = attrs.evolve(entry, message_digest=sha256_of(entry.message_path))
        outcome = yield r.deliverer.deliver(entry)
        self.assertEqual(len(r.server.sent), 1, outcome)

    @inlineCallbacks
    def test_digest_is_checked_in_the_same_thread_trip_as_the_preparation(self):
        """
        Each trip to the file threads holds the mailbox's slot while the reactor gets round to
        the result (~10 ms at 40 sends in flight): a send makes one trip, not two.  (A message
        of at most INLINE_PREPARE_LIMIT bytes makes none: tests.test_graph_drain_path.)
        """
        r = yield start_rig(self, reactor)
        trips = []
        blocking = r.deliverer._blocking

        def counting(f, *args):
            trips.append(f.__name__)
            return blocking(f, *args)

        r.deliverer._blocking = counting
        body = "A line of a long report, repeated to pass the inline limit.\n" * (INLINE_PREPARE_LIMIT // 50)
        entry = r.entry(simple_message(to=[BOB], body=body), ALICE, [BOB])
        self.assertGreater(entry.size, INLINE_PREPARE_LIMIT)
        entry = attrs.evolve(entry, message_digest=sha256_of(entry.message_path))
        outcome = yield r.deliverer.deliver(entry)
        self.assertEqual(len(r.server.sent), 1, outcome)
        self.assertEqual(trips, ["prepare_message"])


class GatewayQuarantineTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_overwritten_spool_file_is_quarantined_and_nothing_reaches_graph(self):
        fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(fake.stop)
        state_dir = os.path.abspath(self.mktemp())
        spool_dir = os.path.join(state_dir, "spool")
        # Accept a message into the spool the way intake does, while no daemon runs.
        disk = SpoolDisk(spool_dir)
        disk.ensure_directories()
        queue_id = "0SJ5Q4ZP1A2B3C4D5E7"
        temp = disk.create_temp(queue_id)
        disk.append(temp, [b"From: alice@contoso.test\r\nTo: bob@fabrikam.test\r\nSubject: pay\r\n\r\n",
                           b"Pay 100 EUR to account 1234.\r\n"])
        entry = disk.publish(temp, SpoolEntry(queue_id, Envelope(ALICE, (BOB,)),
                                              Provenance("127.0.0.1", "c.test", "default"), time.time(), "", 0))
        self.assertIsNotNone(entry.message_digest)
        corrupt_in_place(entry.message_path)

        alarm: Deferred = Deferred()

        def watch(event):
            if event.get("log_level") == LogLevel.critical and not alarm.called:
                alarm.callback(event)

        globalLogPublisher.addObserver(watch)
        self.addCleanup(globalLogPublisher.removeObserver, watch)
        yield start_gateway(self, {
            "gateway": {"state_dir": state_dir},
            "graph": {"tenant_id": fake.tenant_id, "client_id": fake.client_id,
                      "client_secret": fake.client_secret, "authority": fake.authority,
                      "graph_url": fake.graph_url, "ca_bundle": fake.ca_path},
            "queue": {"retry_schedule": ["1s"], "jitter": 0.0},
        })
        event = yield alarm
        self.assertEqual(event.get("queue_id"), queue_id)
        self.assertEqual(fake.sent, [])
        self.assertNotIn("sendMail", fake.operations())
        quarantined = os.listdir(os.path.join(spool_dir, "quarantine"))
        self.assertIn(queue_id + ".msg", quarantined)
        self.assertIn(queue_id + ".env", quarantined)
        with open(os.path.join(spool_dir, "quarantine", queue_id + ".reason")) as f:
            self.assertIn("digest mismatch", f.read())
        self.assertNotIn(queue_id + ".msg", os.listdir(os.path.join(spool_dir, "queue")))


class SendmailCommandDigestTests(SynchronousTestCase):
    def test_graphsmtp_sendmail_records_the_digest_and_the_import_keeps_it(self):
        import io
        import sys

        from gateway.cli import sendmail
        from tests.sendmail_helpers import daemon_spool

        spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            status = sendmail.main(["--spool", spool_dir, "a@example.com"],
                                   stdin=io.BytesIO(b"Subject: cron\n\nall good\n"), environ={})
        finally:
            sys.stderr = stderr
        self.assertEqual(status, 0)
        disk = SpoolDisk(spool_dir)
        [queue_id] = disk.queue_ids(disk.layout.incoming)
        dropped = disk.load(queue_id, directory=disk.layout.incoming)
        self.assertEqual(dropped.message_digest, sha256_of(dropped.message_path))
        [imported] = disk.scan_incoming().entries
        self.assertEqual(imported.message_digest, dropped.message_digest)
        self.assertEqual(disk.load(queue_id).message_digest, sha256_of(imported.message_path))
