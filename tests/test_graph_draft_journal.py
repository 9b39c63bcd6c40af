"""
Issue 10, orphaned drafts: the Graph draft of a large message is recorded in the spool
(``SpoolEntry.draft_id``, through the injected L{IDraftJournal}) before anything is uploaded
into it, so neither a failed attempt nor a crash mid-upload leaves it in the sending mailbox:
the next attempt — in the same process or after a restart — deletes it first.
"""

from __future__ import annotations

import email.policy
import json
import os
import signal

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.delivery.interfaces import Delivered, IDraftJournal, Transient
from gateway.testing.fake_graph import Fault, _Draft, start_fake_graph
from gateway.testing.harness import send_message
from tests.graph_helpers import simple_message, start_rig
from tests.test_gateway_durability import start_daemon
from tests.test_spool_integrity import RecordingJournal
from tests.test_spool_store import SpoolTestMixin

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"


def large_message(size: int = 3_300_000):
    m = simple_message(to=[BOB])
    m.add_attachment(os.urandom(size), maintype="application", subtype="pdf", filename="scan.pdf")
    return m


class JournalledDeliveryTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_draft_id_recorded_before_the_first_upload(self):
        r = yield start_rig(self, reactor)
        journal = RecordingJournal()
        r.deliverer.journal = journal
        entry = r.entry(large_message(), ALICE, [BOB])
        seen = []
        arrival = r.server.arrival("upload")
        arrival.addCallback(lambda _: seen.append(dict(journal.drafts)))
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Delivered)
        [draft_id] = seen[0].values()
        self.assertTrue(draft_id.startswith("draft-"))

    @inlineCallbacks
    def test_failed_upload_deletes_the_draft_and_clears_the_journal(self):
        r = yield start_rig(self, reactor)
        journal = RecordingJournal()
        r.deliverer.journal = journal
        r.server.inject(Fault.status_code(500), operation="upload")
        entry = r.entry(large_message(), ALICE, [BOB])
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Transient)
        self.assertEqual(r.server.drafts, {})
        self.assertEqual(journal.drafts, {entry.queue_id: None})

    @inlineCallbacks
    def test_leftover_draft_is_deleted_before_sending_again(self):
        r = yield start_rig(self, reactor)
        journal = RecordingJournal()
        r.deliverer.journal = journal
        r.server.drafts["draft-orphan"] = _Draft("draft-orphan", ALICE, [BOB], [], [])
        entry = attrs.evolve(r.entry(large_message(), ALICE, [BOB]), draft_id="draft-orphan")
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(r.server.drafts, {})
        self.assertEqual((r.server.deleted_drafts, len(r.server.sent)), (1, 1))
        self.assertEqual(r.server.operations(ALICE)[:2], ["deleteMessage", "createMessage"])

    @inlineCallbacks
    def test_leftover_draft_already_gone_is_fine(self):
        r = yield start_rig(self, reactor)
        entry = attrs.evolve(r.entry(simple_message(to=[BOB]), ALICE, [BOB]), draft_id="draft-gone")
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(r.server.operations(ALICE), ["deleteMessage", "sendMail"])

    @inlineCallbacks
    def test_graph_down_while_deleting_a_leftover_holds_the_message(self):
        r = yield start_rig(self, reactor)
        r.server.inject(Fault.status_code(503), operation="deleteMessage")
        entry = attrs.evolve(r.entry(simple_message(to=[BOB]), ALICE, [BOB]), draft_id="draft-x")
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Transient)
        self.assertNotIn("sendMail", r.server.operations())


class SpoolJournalTests(SpoolTestMixin, SynchronousTestCase):
    def record(self, entry):
        return json.loads(self.read(os.path.join(self.directory, "queue", entry.queue_id + ".env")))

    def test_note_draft_is_durable_and_survives_a_state_change_from_a_stale_copy(self):
        spool = self.make_spool()
        self.assertTrue(IDraftJournal.providedBy(spool))
        entry = self.accept(spool)
        self.successResultOf(spool.note_draft(entry, "draft-7"))
        self.assertEqual(self.record(entry)["draft_id"], "draft-7")
        self.assertEqual(spool.draft_of(entry), "draft-7")
        # The runner writes the deferral from the copy it had before the note.
        self.successResultOf(spool.update(attrs.evolve(entry, attempts=1, next_attempt_at=1_700_000_060.0)))
        self.assertEqual((self.record(entry)["draft_id"], self.record(entry)["attempts"]), ("draft-7", 1))
        self.successResultOf(spool.note_draft(entry, None))
        self.assertIsNone(self.record(entry)["draft_id"])
        self.assertEqual(self.record(entry)["attempts"], 1)


LARGE_CONFIG = """
[graph]
tenant_id = "{tenant}"
client_id = "{client}"
client_secret = "{secret}"
authority = "{authority}"
graph_url = "{graph_url}"
ca_bundle = "{ca}"

[queue]
retry_schedule = ["1s"]
jitter = 0.0
"""


class SigkillMidUploadTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_no_orphaned_draft_after_sigkill_mid_upload(self):
        fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(fake.stop)
        state_dir = os.path.abspath(self.mktemp())
        os.makedirs(state_dir)
        with open(os.path.join(state_dir, "graphsmtp.toml"), "w") as f:
            f.write(LARGE_CONFIG.format(tenant=fake.tenant_id, client=fake.client_id, secret=fake.client_secret,
                                        authority=fake.authority, graph_url=fake.graph_url, ca=fake.ca_path))
        # The first upload PUT is held: the daemon is killed while it waits for the answer.
        fake.inject(Fault.hang(), operation="upload")
        upload_started = fake.arrival("upload")
        daemon = start_daemon(state_dir)
        self.addCleanup(_stop, daemon, signal.SIGKILL)
        port = yield daemon.port
        data = large_message().as_bytes(policy=email.policy.SMTP)
        code, text = yield send_message(port, ALICE, [BOB], data, timeout=60)
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[-1]
        yield upload_started
        self.assertEqual(len(fake.drafts), 1)
        [orphan] = fake.drafts
        daemon.transport.signalProcess(signal.SIGKILL)
        yield daemon.ended
        record = yield deferToThread(_read_record, state_dir, queue_id)
        self.assertEqual(record["draft_id"], orphan)

        fake.clear_faults()
        again = start_daemon(state_dir)
        self.addCleanup(_stop, again, signal.SIGTERM)
        yield again.port
        yield again.wait_delivered({queue_id.encode()})
        self.assertEqual(fake.drafts, {})
        self.assertEqual(len(fake.sent), 1)
        self.assertEqual(fake.deleted_drafts, 1)
        self.assertIn(b"deleted the draft an earlier attempt left behind", again.output)


def _stop(daemon, sig):
    """Cleanup: end the daemon if the test did not (a failing assertion), and wait for it."""
    if daemon.transport.pid is not None:
        daemon.transport.signalProcess(sig)
    return daemon.ended


def _read_record(state_dir: str, queue_id: str) -> dict:
    with open(os.path.join(state_dir, "spool", "queue", queue_id + ".env"), "rb") as f:
        return json.loads(f.read())


class LeftoverDraftOfAChangedMessageTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_leftover_draft_deleted_even_when_the_message_is_quarantined(self):
        from tests.test_spool_integrity import corrupt_in_place, sha256_of

        r = yield start_rig(self, reactor)
        journal = RecordingJournal()
        r.deliverer.journal = journal
        r.server.drafts["draft-orphan"] = _Draft("draft-orphan", ALICE, [BOB], [], [])
        entry = r.entry(simple_message(to=[BOB]), ALICE, [BOB])
        entry = attrs.evolve(entry, draft_id="draft-orphan", message_digest=sha256_of(entry.message_path))
        corrupt_in_place(entry.message_path)
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Transient)
        self.assertEqual(len(journal.quarantined), 1)
        self.assertEqual((r.server.drafts, r.server.sent), ({}, []))
