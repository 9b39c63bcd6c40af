"""
The Graph deliverer end to end against the fake Graph + Entra over real HTTPS on loopback:
message shapes, exact recipients on every path, large messages through upload sessions, the
sending-mailbox modes, the fault matrix, token expiry mid-run, per-mailbox concurrency, and
no secrets or tokens in the log.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
from email.message import EmailMessage

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.delivery.graph.factory import ConnectionsService
from gateway.delivery.interfaces import Delivered, Permanent, Transient
from gateway.testing.fake_graph import Fault
from gateway.testing.logs import LogCapture
from tests.graph_helpers import simple_message, start_rig

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"
CAROL = "carol@fabrikam.test"
ERIN = "erin@hidden.test"


def parsed(sent) -> EmailMessage:
    return email.message_from_bytes(sent.mime, policy=email.policy.default)


class ContentTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def rig(self, **kw):
        self.r = yield start_rig(self, reactor, **kw)
        return self.r

    @inlineCallbacks
    def test_plain_text_goes_out_byte_for_byte(self):
        r = yield self.rig()
        entry = r.entry(simple_message(to=[BOB]), "bounces@contoso.test", [BOB])
        outcome = yield r.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Delivered)
        self.assertIn("request-id", outcome.detail)
        [sent] = r.server.sent
        self.assertEqual((sent.mailbox, sent.kind, sent.to, sent.bcc), (ALICE, "mime", (BOB,), ()))
        with open(entry.message_path, "rb") as f:
            self.assertEqual(sent.mime, f.read())
        self.assertEqual(r.deliverer.stats.paths, {"sendMail-plain": 1})
        [request] = [q for q in r.server.requests if q.operation == "sendMail"]
        self.assertEqual(request.content_type, "text/plain")

    @inlineCallbacks
    def test_html_alternative_attachments_inline_image_and_utf8(self):
        r = yield self.rig()
        m = EmailMessage()
        m["From"] = "Jürgen <alice@contoso.test>"
        m["To"] = BOB
        m["Subject"] = "Grüße – 報告"
        m.set_content("Grüße, see the report.\n")
        m.add_alternative("<p>Grüße <img src='cid:logo'></p>", subtype="html")
        m.get_payload()[1].add_related(b"\x89PNG\r\n\x1a\nfake", maintype="image", subtype="png", cid="<logo>")
        pdf = os.urandom(50_000)
        m.add_attachment(pdf, maintype="application", subtype="pdf", filename="report.pdf")
        outcome = yield r.deliverer.deliver(r.entry(m, ALICE, [BOB]))
        self.assertIsInstance(outcome, Delivered)
        msg = parsed(r.server.sent[0])
        self.assertEqual(msg["Subject"], "Grüße – 報告")
        self.assertEqual(msg.get_body(("plain",)).get_content().replace("\r\n", "\n"), "Grüße, see the report.\n")
        self.assertIn("Grüße", msg.get_body(("html",)).get_content())
        parts = {p.get_content_type(): p for p in msg.walk()}
        self.assertEqual(parts["image/png"]["Content-ID"], "<logo>")
        self.assertEqual(parts["application/pdf"].get_content(), pdf)

    @inlineCallbacks
    def test_envelope_only_recipient_goes_in_bcc_header(self):
        r = yield self.rig()
        outcome = yield r.deliverer.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB, ERIN]))
        self.assertIsInstance(outcome, Delivered)
        [sent] = r.server.sent
        self.assertEqual((sent.to, sent.bcc), ((BOB,), (ERIN,)))
        msg = parsed(sent)
        self.assertEqual((msg["To"], msg["Bcc"]), (BOB, ERIN))
        # ERIN appears in the Bcc field and nowhere else (Exchange strips Bcc from copies).
        self.assertEqual(sent.mime.count(ERIN.encode()), 1)
        self.assertEqual(r.deliverer.stats.paths, {"sendMail-rewrite": 1})

    @inlineCallbacks
    def test_bcc_only_message(self):
        r = yield self.rig()
        m = simple_message(to=[])
        outcome = yield r.deliverer.deliver(r.entry(m, ALICE, [ERIN]))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(r.server.sent[0].recipients, {ERIN})
        self.assertEqual(r.server.received_by(ERIN), r.server.sent)

    @inlineCallbacks
    def test_header_address_not_in_envelope_receives_nothing(self):
        r = yield self.rig()
        outcome = yield r.deliverer.deliver(r.entry(simple_message(to=[BOB, CAROL]), ALICE, [BOB]))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(r.server.received_by(CAROL), [])
        self.assertNotIn(CAROL.encode(), r.server.sent[0].mime)
        self.assertEqual(r.server.sent[0].recipients, {BOB})

    @inlineCallbacks
    def test_draft_mode_hides_envelope_only_recipients_from_the_mime(self):
        r = yield self.rig(hidden_recipients="draft")
        outcome = yield r.deliverer.deliver(r.entry(simple_message(to=[BOB, CAROL]), ALICE, [BOB, ERIN]))
        self.assertIsInstance(outcome, Delivered)
        [sent] = r.server.sent
        self.assertEqual((sent.kind, sent.to, sent.bcc), ("draft", (BOB,), (ERIN,)))
        self.assertNotIn(ERIN.encode(), sent.mime)
        self.assertNotIn(CAROL.encode(), sent.mime)
        self.assertEqual(r.server.operations(ALICE), ["createMessage", "patchMessage", "send"])
        self.assertEqual(r.server.drafts, {})

    @inlineCallbacks
    def test_twenty_megabyte_attachment_through_an_upload_session(self):
        r = yield self.rig()
        m = simple_message(to=[BOB])
        big = os.urandom(20 * 1024 * 1024)
        m.add_attachment(big, maintype="application", subtype="pdf", filename="scan.pdf")
        outcome = yield r.deliverer.deliver(r.entry(m, ALICE, [BOB, ERIN]))
        self.assertIsInstance(outcome, Delivered)
        [sent] = r.server.sent
        self.assertEqual((sent.kind, sent.to, sent.bcc), ("draft", (BOB,), (ERIN,)))
        attachment = sent.attachment("scan.pdf")
        self.assertEqual(hashlib.sha256(attachment.data).digest(), hashlib.sha256(big).digest())
        self.assertEqual(attachment.content_type, "application/pdf")
        skeleton = parsed(sent)
        self.assertEqual(skeleton["Message-ID"], "<test-1@contoso.test>")
        self.assertEqual([p.get_content_type() for p in skeleton.walk() if not p.is_multipart()], ["text/plain"])
        uploads = [q for q in r.server.requests if q.operation == "upload"]
        self.assertEqual(len(uploads), -(-len(big) // r.config.upload_chunk_size))
        self.assertTrue(all(not q.authorization and q.length <= 4 * 1024 * 1024 for q in uploads))
        self.assertEqual(r.server.operations(ALICE)[:2], ["createMessage", "createUploadSession"])
        self.assertEqual(r.server.operations(ALICE)[-1], "send")
        self.assertEqual(r.deliverer.stats.paths, {"draft-large": 1})

    @inlineCallbacks
    def test_medium_attachment_is_posted_as_json_when_cut_out(self):
        r = yield self.rig(max_request_size=1_000_000)
        m = simple_message(to=[BOB])
        data = os.urandom(1_500_000)
        m.add_attachment(data, maintype="application", subtype="zip", filename="logs.zip")
        outcome = yield r.deliverer.deliver(r.entry(m, ALICE, [BOB]))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(r.server.sent[0].attachment("logs.zip").data, data)
        self.assertEqual(r.server.operations(ALICE), ["createMessage", "addAttachment", "send"])

    @inlineCallbacks
    def test_large_message_refused_when_large_path_is_off(self):
        r = yield self.rig(large_messages=False)
        # The tenant health monitor's start-up token probe races the delivery on a loaded
        # machine: let it finish, so that only this message's requests are counted below.
        yield r.delivery.tenant_monitor.probe_all()
        before = len(r.server.requests)
        m = simple_message(to=[BOB])
        m.add_attachment(os.urandom(3_500_000), maintype="application", subtype="pdf", filename="x.pdf")
        outcome = yield r.deliverer.deliver(r.entry(m, ALICE, [BOB]))
        self.assertIsInstance(outcome, Permanent)
        self.assertEqual(outcome.status, "5.3.4")
        self.assertEqual(r.server.requests[before:], [])  # refused before any request for it
        self.assertEqual(r.server.sent, [])

    @inlineCallbacks
    def test_send_as_modes(self):
        r = yield self.rig(send_as="envelope-from")
        yield r.deliverer.deliver(r.entry(simple_message(to=[BOB]), "app@contoso.test", [BOB]))
        self.assertEqual(r.server.sent[-1].mailbox, "app@contoso.test")
        r2 = yield start_rig(self, reactor, send_as="relay@contoso.test")
        yield r2.deliverer.deliver(r2.entry(simple_message(to=[BOB]), "app@contoso.test", [BOB]))
        self.assertEqual(r2.server.sent[-1].mailbox, "relay@contoso.test")
        self.assertEqual(parsed(r2.server.sent[-1])["From"], ALICE)  # From is never rewritten


class FaultTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def setUp(self):
        self.r = yield start_rig(self, reactor, request_timeout=1.0, mailbox_rate=6000.0, mailbox_burst=20)
        self.server = self.r.server
        self.deliverer = self.r.deliverer

    def deliver(self, to=(BOB,), sender=ALICE):
        return self.deliverer.deliver(self.r.entry(simple_message(sender=sender, to=list(to)), sender, list(to)))

    @inlineCallbacks
    def outcome_for(self, fault, operation="sendMail"):
        self.server.inject(fault, operation=operation)
        outcome = yield self.deliver()
        return outcome

    @inlineCallbacks
    def test_throttled_with_retry_after_pauses_only_that_mailbox(self):
        before = reactor.seconds()
        outcome = yield self.outcome_for(Fault.throttled(retry_after="10"))
        self.assertIsInstance(outcome, Transient)
        self.assertFalse(outcome.possibly_delivered)
        self.assertTrue(before + 10 <= outcome.retry_at <= reactor.seconds() + 10)
        requests = len(self.server.requests)
        again = yield self.deliver()
        self.assertIsInstance(again, Transient)
        self.assertEqual(again.retry_at, outcome.retry_at)
        self.assertEqual(len(self.server.requests), requests)  # paused: Graph was not asked
        other = yield self.deliver(sender="dave@contoso.test")
        self.assertIsInstance(other, Delivered)

    @inlineCallbacks
    def test_throttled_without_retry_after_and_mailbox_concurrency(self):
        now = reactor.seconds()
        outcome = yield self.outcome_for(Fault.throttled(retry_after=None))
        self.assertTrue(now + 5 <= outcome.retry_at <= reactor.seconds() + 5)
        self.server.inject(Fault.mailbox_concurrency(), mailbox="x@contoso.test")
        outcome = yield self.deliver(sender="x@contoso.test")
        self.assertIsInstance(outcome, Transient)
        self.assertIn("MailboxConcurrency", outcome.reason)
        self.assertTrue(now + 1 <= outcome.retry_at <= reactor.seconds() + 1)

    @inlineCallbacks
    def test_server_errors_are_transient_and_ambiguous_ones_flagged(self):
        expectations = {500: True, 502: True, 503: False, 504: True}
        for status, possibly in expectations.items():
            sender = f"s{status}@contoso.test"
            self.server.inject(Fault.status_code(status, retry_after="3" if status == 503 else None), mailbox=sender)
            outcome = yield self.deliver(sender=sender)
            self.assertIsInstance(outcome, Transient, status)
            self.assertEqual(outcome.possibly_delivered, possibly, status)
            self.assertIn(str(status), outcome.reason)
            if status == 503:
                self.assertIsNotNone(outcome.retry_at)

    @inlineCallbacks
    def test_503_makes_the_next_request_use_a_new_connection(self):
        yield self.deliver()
        yield self.deliver(sender="dave@contoso.test")
        reused = self.server.connections
        self.server.inject(Fault.status_code(503, retry_after="1"))
        outcome = yield self.deliver(sender="erin@contoso.test")
        self.assertIsInstance(outcome, Transient)
        self.assertEqual(self.server.connections, reused)  # persistent connection so far
        yield self.deliver(sender="frank@contoso.test")
        self.assertEqual(self.server.connections, reused + 1)  # Graph asks for a fresh one after 503

    @inlineCallbacks
    def test_json_send_honours_save_to_sent_items(self):
        token = yield self.deliverer.tokens.acquire(self.deliverer.resolver.default)
        message = {"subject": "hi", "body": {"contentType": "Text", "content": "hello"},
                   "toRecipients": [{"emailAddress": {"address": BOB}}]}
        response = yield self.deliverer.client.send_json(self.server.graph_url, ALICE, token, message, save_to_sent_items=False)
        self.assertEqual(response.code, 202)
        [sent] = self.server.sent
        self.assertEqual((sent.kind, sent.to, sent.save_to_sent_items), ("json", (BOB,), False))

    @inlineCallbacks
    def test_proxy_html_error_is_transient(self):
        outcome = yield self.outcome_for(Fault(action="raw", status=502, body=b"<html>Bad Gateway</html>"))
        self.assertIsInstance(outcome, Transient)
        self.assertIn("Bad Gateway", outcome.reason)

    @inlineCallbacks
    def test_hang_and_reset_after_the_body_are_possibly_delivered(self):
        outcome = yield self.outcome_for(Fault.hang())
        self.assertIsInstance(outcome, Transient)
        self.assertTrue(outcome.possibly_delivered)
        outcome = yield self.outcome_for(Fault.reset())
        self.assertIsInstance(outcome, Transient)
        self.assertTrue(outcome.possibly_delivered)
        self.assertEqual(self.deliverer.stats.possibly_duplicated, 2)
        outcome = yield self.outcome_for(Fault.slow(0.2))
        self.assertIsInstance(outcome, Delivered)

    @inlineCallbacks
    def test_expired_token_is_refreshed_once(self):
        first = yield self.deliver()
        self.assertIsInstance(first, Delivered)
        self.server.expire_tokens()  # token expiry mid-run
        second = yield self.deliver()
        self.assertIsInstance(second, Delivered)
        self.assertEqual(self.server.token_requests, 2)
        self.assertEqual(self.deliverer.stats.token_retries, 1)
        statuses = [q.status for q in self.server.requests if q.operation == "sendMail"]
        self.assertEqual(statuses, [202, 401, 202])

    @inlineCallbacks
    def test_token_refused_even_when_fresh_pauses_the_tenant(self):
        self.server.inject(Fault.expired_token(), operation="sendMail", times=None)
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        self.assertIsNotNone(outcome.retry_at)
        [health] = self.deliverer.health()
        self.assertEqual(health.state, "config-error")
        requests = len(self.server.requests)
        again = yield self.deliver(sender="dave@contoso.test")
        self.assertIsInstance(again, Transient)
        self.assertEqual(len(self.server.requests), requests)

    @inlineCallbacks
    def test_permanent_errors_keep_graphs_code(self):
        cases = [
            (Fault.status_code(403, "ErrorSendAsDenied", "cannot send as"), "5.7.1", "ErrorSendAsDenied"),
            (Fault.status_code(404, "ErrorInvalidUser", "no such user"), "5.1.8", "ErrorInvalidUser"),
            (Fault.status_code(400, "ErrorInvalidRecipients", "bad rcpt"), "5.1.3", "ErrorInvalidRecipients"),
            (Fault.status_code(400, "ErrorMimeContentInvalidBase64String", "bad b64"), "5.6.0", "ErrorMimeContentInvalidBase64String"),
        ]
        for fault, status, code in cases:
            outcome = yield self.outcome_for(fault)
            self.assertIsInstance(outcome, Permanent)
            self.assertEqual((outcome.status, outcome.remote_code), (status, code))
            self.assertIn(fault.message, outcome.reason)

    @inlineCallbacks
    def test_413_falls_back_to_the_draft_path(self):
        self.server.inject(Fault.status_code(413, "RequestEntityTooLarge"), operation="sendMail")
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(self.server.sent[0].kind, "draft")

    @inlineCallbacks
    def test_mailbox_not_found_in_the_fake_directory(self):
        self.server.mailboxes = {ALICE}
        outcome = yield self.deliver(sender="ghost@contoso.test")
        self.assertEqual((type(outcome), outcome.remote_code), (Permanent, "ErrorInvalidUser"))

    @inlineCallbacks
    def test_bad_credentials_pause_the_tenant_loudly(self):
        log = LogCapture.install(self)
        self.server.inject(Fault.invalid_client(), operation="token", times=None)
        before = reactor.seconds()
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        self.assertGreaterEqual(outcome.retry_at, before + 60)
        [health] = self.deliverer.health()
        self.assertEqual((health.state, health.paused_until), ("config-error", outcome.retry_at))
        self.assertIn("AADSTS7000215", health.detail)
        self.assertTrue([e for e in log.events if e.get("log_level").name == "critical" and "AADSTS7000215" in (e.get("detail") or "")])
        tokens = self.server.token_requests
        again = yield self.deliver(sender="dave@contoso.test")
        self.assertIsInstance(again, Transient)
        self.assertEqual(self.server.token_requests, tokens)  # paused: Entra was not asked again

    @inlineCallbacks
    def test_health_shows_the_configured_tenant(self):
        [health] = self.deliverer.health()
        self.assertEqual((health.label, health.state), ("default", "unknown"))
        yield self.deliver()
        [health] = self.deliverer.health()
        self.assertEqual(health.state, "ok")

    @inlineCallbacks
    def test_token_endpoint_down_is_transient(self):
        self.server.inject(Fault.status_code(503, "temporarily_unavailable"), operation="token", times=None)
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        self.assertIsNone(outcome.retry_at)
        self.assertEqual(self.deliverer.health()[0].state, "unreachable")

    @inlineCallbacks
    def test_graph_unreachable_is_transient_and_not_ambiguous(self):
        first = yield self.deliver()  # token cached
        self.assertIsInstance(first, Delivered)
        yield self.server.stop()
        # The client forgets the kept-alive connection the fake just closed, as it does once it
        # reads the close: a request written whole into a connection that dies before any
        # answer is ambiguous (Graph may have read it), which is not what this test is about.
        [connections] = [s for s in self.r.delivery.services if isinstance(s, ConnectionsService)]
        yield connections.pool.closeCachedConnections()
        outcome = yield self.deliver()
        self.assertIsInstance(outcome, Transient)
        self.assertFalse(outcome.possibly_delivered)

    @inlineCallbacks
    def test_failed_upload_discards_the_draft(self):
        self.server.inject(Fault.status_code(500), operation="upload")
        m = simple_message(to=[BOB])
        m.add_attachment(os.urandom(4 * 1024 * 1024), maintype="application", subtype="pdf", filename="x.pdf")
        outcome = yield self.deliverer.deliver(self.r.entry(m, ALICE, [BOB]))
        self.assertIsInstance(outcome, Transient)
        self.assertFalse(outcome.possibly_delivered)
        self.assertEqual((self.server.deleted_drafts, self.server.drafts, self.server.sent), (1, {}, []))

    @inlineCallbacks
    def test_draft_permission_missing_is_explained(self):
        r = yield start_rig(self, reactor, hidden_recipients="draft")
        r.server.inject(Fault.status_code(403, "ErrorAccessDenied", "Access is denied."), operation="createMessage")
        outcome = yield r.deliverer.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB, ERIN]))
        self.assertIsInstance(outcome, Permanent)
        self.assertIn("Mail.ReadWrite", outcome.reason)


class ConcurrencyTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_no_more_than_two_requests_per_mailbox(self):
        """Admission is the queue runner's (per-mailbox ready queues): through a real runner,
        the deliverer's mailbox_concurrency holds against the real fake Graph."""
        from twisted.internet.defer import Deferred
        from zope.interface import implementer

        from gateway.config.model import QueueConfig
        from gateway.delivery.interfaces import IDeliveryObserver
        from gateway.queue.runner import QueueRunner
        from gateway.testing.memory_spool import MemorySpool

        r = yield start_rig(self, reactor, mailbox_rate=60_000.0, mailbox_burst=30)
        r.server.inject(Fault.slow(0.3), operation="sendMail", times=None)
        entries = [r.entry(simple_message(to=[BOB]), ALICE, [BOB]) for _ in range(12)]
        entries += [r.entry(simple_message(sender="dave@contoso.test", to=[BOB]), "dave@contoso.test", [BOB]) for _ in range(3)]
        spool = MemorySpool()
        spool.messages = [(e, b"") for e in entries]
        all_done = Deferred()

        @implementer(IDeliveryObserver)
        class Count:
            outcomes = []

            def _seen(self, kind, entry, outcome):
                self.outcomes.append(kind)
                if len(self.outcomes) == len(entries) and not all_done.called:
                    all_done.callback(None)

            def delivered(self, entry, outcome):
                self._seen("delivered", entry, outcome)

            def deferred(self, entry, outcome):
                self._seen("deferred", entry, outcome)

            def failed(self, entry, outcome):
                self._seen("failed", entry, outcome)

        runner = QueueRunner(spool, r.deliverer, QueueConfig(concurrency=16), reactor, observers=[Count()])
        runner.startService()
        self.addCleanup(runner.stopService)
        yield all_done
        self.assertEqual(Count.outcomes, ["delivered"] * len(entries))
        self.assertEqual(r.server.max_concurrency[ALICE], 2)
        self.assertEqual(r.server.max_concurrency["dave@contoso.test"], 2)
        self.assertEqual(r.deliverer.stats.deferred, 0)  # nothing refused, nothing retried


class SecretTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_no_secret_or_token_in_the_log(self):
        log = LogCapture.install(self)
        r = yield start_rig(self, reactor)
        r.server.inject(Fault.expired_token(), operation="createMessage")
        m = simple_message(to=[BOB])
        m.add_attachment(os.urandom(3_200_000), maintype="application", subtype="pdf", filename="x.pdf")
        outcome = yield r.deliverer.deliver(r.entry(m, ALICE, [BOB]))
        self.assertIsInstance(outcome, Delivered)
        r.server.inject(Fault.invalid_client(), operation="token", times=None)
        r.server.expire_tokens()
        yield r.deliverer.deliver(r.entry(simple_message(to=[BOB]), ALICE, [BOB]))
        text = log.text()
        self.assertTrue(log.events)
        self.assertNotIn(r.server.client_secret, text)
        self.assertGreaterEqual(len(r.server._tokens), 2)
        for token in r.server._tokens:
            self.assertNotIn(token, text)
        self.assertNotIn("authtoken", text)
        self.assertNotIn("Bearer", text)


class OutageRecoveryTests(TestCase):
    """End to end over HTTPS: a Graph outage, then the first success drains what it deferred."""

    timeout = 60

    @inlineCallbacks
    def test_messages_deferred_by_503s_leave_once_graph_answers_again(self):
        from twisted.internet.defer import Deferred
        from zope.interface import implementer

        from gateway.config.model import QueueConfig
        from gateway.delivery.interfaces import IDeliveryObserver
        from gateway.queue.runner import QueueRunner
        from gateway.spool.entry import Envelope, Provenance
        from gateway.spool.store import DirectorySpool
        from gateway.testing.spool import SynchronousThreadPool

        r = yield start_rig(self, reactor, mailbox_rate=6000.0, mailbox_burst=30)
        r.server.inject(Fault.status_code(503, "ServiceUnavailable", "down"), operation="sendMail", times=5)
        spool = DirectorySpool(os.path.abspath(self.mktemp()), SynchronousThreadPool(), reactor)
        self.addCleanup(spool.close)
        waits: dict = {}

        def when(kind, count):
            d = Deferred()
            waits[(kind, count)] = d
            return d

        @implementer(IDeliveryObserver)
        class Events:
            seen = {"delivered": [], "deferred": [], "failed": []}

            def _note(self, kind, entry):
                self.seen[kind].append(entry)
                d = waits.pop((kind, len(self.seen[kind])), None)
                if d is not None:
                    d.callback(None)

            def delivered(self, entry, outcome):
                self._note("delivered", entry)

            def deferred(self, entry, outcome):
                self._note("deferred", entry)

            def failed(self, entry, outcome):
                self._note("failed", entry)

        events = Events()
        # A five-minute first step: without the prompt drain this test would time out.
        runner = QueueRunner(spool, r.deliverer, QueueConfig(retry_schedule=(300.0,), jitter=0.0), reactor,
                             observers=[events])
        runner.startService()
        self.addCleanup(runner.stopService)
        yield runner.ready

        def accept():
            return spool.open_writer().addCallback(commit)

        def commit(writer):
            writer.write(simple_message(to=[BOB]).as_bytes().replace(b"\n", b"\r\n"))
            return writer.commit(Envelope(ALICE, (BOB,)), Provenance("127.0.0.1", "client.test", "test"))

        all_deferred = when("deferred", 5)
        for _ in range(5):
            yield accept()
        yield all_deferred
        self.assertTrue(all(e.next_attempt_at - e.history[-1].at == 300.0 for e in events.seen["deferred"]))
        self.assertEqual({e.history[-1].cause for e in events.seen["deferred"]}, {"service"})
        all_delivered = when("delivered", 6)
        yield accept()  # Graph answers again: this one goes, and releases the five
        yield all_delivered
        self.assertEqual(len(r.server.sent_by(ALICE)), 6)
        self.assertEqual(runner.stats.released_after_outage, 5)
