"""
Regression tests for issue 8, findings 1-5: every way a message could say one thing to the
sender checks and another to the Graph deliverer, and every header shape that froze or crashed
the parsers.  Each test failed on the commit before gateway.mail existed.

Unit-level tests drive the real guard and policies with the views the SMTP layer builds; the
integration tests speak SMTP (STARTTLS + AUTH) to a real listener.
"""

from __future__ import annotations

import base64
import io
import os
import smtplib
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.auth.relay import RelayAccessPolicy
from gateway.cli import sendmail
from gateway.config.model import ListenerConfig
from gateway.delivery.graph.mime import HeaderSection, plan_recipients, split_fields
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import Continue, Identity, Reject, TempFail
from gateway.policy.rate_limit import build as build_rate_limit
from gateway.policy.sender_allowlist import build as build_allowlist
from gateway.smtp.auth import AuthExchange
from gateway.smtp.auth import Refusal as AuthRefusal
from gateway.spool.disk import SpoolDisk
from gateway.testing.policy import make_message, make_session, run_transaction
from tests.security_harness import ALICE_PASSWORD, HOST, SecureServer

ALICE = Identity("alice", ("alice@corp.example",))
#: Finding 1: the only From of the message, written with a space before the colon, last.
SPACE_COLON_FROM = b"To: team@corp.example\r\nSubject: quarterly\r\nFrom : CEO <ceo@corp.example>\r\n\r\nbody\r\n"


def guard(**listener_options):
    values = dict(name="l", endpoint="tcp:0", auth="optional")
    values.update(listener_options)
    return RelayAccessPolicy(ListenerConfig(**values))


def allowlist(**options):
    return PolicyChain([build_allowlist(options, PolicyContext(clock=Clock(), listener="submission", key="p"))])


def refused(test, verdict, code=550, status="5.6.0"):
    test.assertIsInstance(verdict, Reject, repr(verdict))
    test.assertEqual((verdict.code, verdict.status), (code, status), repr(verdict))
    return verdict.text


def encoded_word_from(words: int = 17_800) -> bytes:
    """Finding 2: a From field of ~250 KB of RFC 2047 encoded words in front of a permitted address."""
    lines = [b" ".join([b"=?utf-8?q?a?="] * 50)] * (words // 50)
    return b"From: " + b"\r\n ".join(lines) + b"\r\n <alice@corp.example>\r\n"


class SenderImpersonationTests(SynchronousTestCase):
    """Finding 1: ``From : CEO <ceo@...>`` as the last header line."""

    def test_space_before_colon_from_is_refused_by_the_login_guard(self):
        verdict = guard().on_message(make_session(identity=ALICE, sender="alice@corp.example"), make_message(SPACE_COLON_FROM))
        text = refused(self, verdict)
        self.assertIn("white space before the colon", text)

    def test_space_before_colon_from_is_refused_for_trusted_senders(self):
        policy = guard(trusted_networks=(__import__("ipaddress").ip_network("10.0.0.0/8"),),
                       trusted_senders=("printer@corp.example",))
        verdict = policy.on_message(make_session("10.1.2.3", sender="printer@corp.example"), make_message(SPACE_COLON_FROM))
        refused(self, verdict)

    def test_space_before_colon_from_is_refused_by_sender_allowlist(self):
        result = self.successResultOf(run_transaction(
            allowlist(allow=["alice@corp.example"]), make_session(login="alice"), "alice@corp.example",
            ["team@corp.example"], SPACE_COLON_FROM))
        self.assertEqual(result.step, "message")
        refused(self, result.result.verdict)

    def test_resent_from_is_checked(self):
        """Finding 5: Resent-From / Resent-Sender name the sender too."""
        raw = b"From: alice@corp.example\r\nResent-From: ceo@corp.example\r\n\r\nx\r\n"
        verdict = guard().on_message(make_session(identity=ALICE, sender="alice@corp.example"), make_message(raw))
        text = refused(self, verdict, 550, "5.7.1")
        self.assertIn("Resent-From", text)

    def test_display_name_that_is_another_address_is_refused(self):
        """Finding 5: ``"ceo@corp.example" <alice@...>`` shows the CEO's address to the reader."""
        raw = b'From: "ceo@corp.example" <alice@corp.example>\r\n\r\nx\r\n'
        verdict = guard().on_message(make_session(identity=ALICE, sender="alice@corp.example"), make_message(raw))
        self.assertIn("display name", refused(self, verdict))
        # The address itself as display name is what many devices write: fine.
        same = b'From: "alice@corp.example" <alice@corp.example>\r\n\r\nx\r\n'
        self.assertEqual(guard().on_message(make_session(identity=ALICE, sender="alice@corp.example"), make_message(same)), Continue())

    def test_encoded_display_name_that_decodes_to_an_address_is_refused(self):
        raw = b"From: =?utf-8?q?ceo=40corp=2Eexample?= <alice@corp.example>\r\n\r\nx\r\n"
        verdict = guard().on_message(make_session(identity=ALICE, sender="alice@corp.example"), make_message(raw))
        refused(self, verdict)


class ParserCrashTests(SynchronousTestCase):
    """Findings 2 and 3: shapes that froze or crashed the parsers are refused with a reason."""

    def run_allowlist(self, header: bytes):
        return self.successResultOf(run_transaction(
            allowlist(allow=["*@corp.example"]), make_session(login="alice"), "alice@corp.example",
            ["team@corp.example"], header + b"\r\nbody\r\n"))

    def test_nested_comments_are_refused_not_a_temporary_failure(self):
        raw = b"From: " + b"(" * 2000 + b")" * 2000 + b" alice@corp.example\r\n"
        verdict = self.run_allowlist(raw).result.verdict
        self.assertNotIsInstance(verdict, TempFail)
        self.assertIn("comment nesting", refused(self, verdict))

    def test_empty_groups_in_from_are_refused_not_a_temporary_failure(self):
        raw = b"From: " + b"\r\n ".join([b"g:;" * 100] * 800) + b"\r\n"
        verdict = self.run_allowlist(raw).result.verdict
        self.assertNotIsInstance(verdict, TempFail)
        self.assertIsInstance(verdict, Reject)
        self.assertIn(verdict.status, ("5.6.0", "5.3.4"))

    def test_encoded_word_flood_is_refused_naming_the_limit(self):
        verdict = self.run_allowlist(encoded_word_from()).result.verdict
        self.assertIn("encoded words", refused(self, verdict, 552, "5.3.4"))


class GroupRecipientTests(SynchronousTestCase):
    """Finding 4: ``To: victim@x, outsider@evil.example:;`` names a second recipient to lenient parsers."""

    RAW = b"From: alice@corp.example\r\nTo: victim@x.example, outsider@evil.example:;\r\n\r\nx\r\n"

    def test_refused_at_intake(self):
        verdict = guard().on_message(make_session(identity=ALICE, sender="alice@corp.example"), make_message(self.RAW))
        refused(self, verdict)

    def test_graph_never_receives_the_bogus_group(self):
        header = self.RAW.split(b"\r\n\r\n")[0] + b"\r\n"
        section = HeaderSection(tuple(split_fields(header)), len(header) + 2, len(self.RAW))
        plan = plan_recipients(section, ["victim@x.example"])
        self.assertNotIn(b"outsider", plan.header)


class RecordedDecisionTests(SynchronousTestCase):
    """Decide once, record, execute: the deliverer sends through the recorded mailbox."""

    def test_deliverer_executes_the_recorded_mailbox_not_the_headers(self):
        from gateway.config.graph import GraphConfig
        from gateway.delivery.graph.deliverer import prepare_message

        path = os.path.join(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"From: CEO <ceo@corp.example>\r\nTo: team@corp.example\r\n\r\nbody\r\n")
        config = GraphConfig(tenant_id="t", client_id="c", authority="https://login.test/t", graph_url="https://graph.test")
        recorded = prepare_message(path, ("team@corp.example",), "alice@corp.example", config, "alice@corp.example")
        self.assertEqual(recorded.mailbox, "alice@corp.example")
        # An entry from before the decision was recorded: judged with the same grammar.
        self.assertEqual(prepare_message(path, ("team@corp.example",), "alice@corp.example", config).mailbox, "ceo@corp.example")
        with open(path, "wb") as f:
            f.write(b"To: team@corp.example\r\nFrom : CEO <ceo@corp.example>\r\n\r\nbody\r\n")
        from gateway.delivery.graph.mime import MessageFormatError
        self.assertRaises(MessageFormatError, prepare_message, path, ("team@corp.example",), "alice@corp.example", config)


class LowFindingTests(SynchronousTestCase):
    """Finding 5: rate-limit per +tag, AUTH PLAIN authzid, the two pattern matchers, sendmail -F."""

    def test_rate_limit_sender_key_ignores_plus_tags(self):
        clock = Clock()
        chain = PolicyChain([build_rate_limit({"key": "sender", "messages": 1},
                                              PolicyContext(clock=clock, listener="l", key="p"))])

        def send(sender):
            return self.successResultOf(run_transaction(chain, make_session(), sender, ["b@x.example"], None))

        self.assertTrue(send("alerts+1@corp.example").allowed)
        self.assertFalse(send("alerts+2@corp.example").allowed)
        self.assertFalse(send('"Alerts"@Corp.Example.').allowed)

    def test_auth_plain_with_a_different_authorisation_identity_is_refused(self):
        exchange = AuthExchange("PLAIN")
        step = exchange.start(base64.b64encode(b"ceo@corp.example\x00alice\x00pw"))
        self.assertIsInstance(step, AuthRefusal)
        self.assertEqual(step.status[:4], "5.7.")
        same = AuthExchange("PLAIN").start(base64.b64encode(b"alice\x00alice\x00pw"))
        self.assertNotIsInstance(same, AuthRefusal)

    def test_both_pattern_matchers_agree_on_quoted_and_any(self):
        from gateway.auth.patterns import sender_matches, validate_pattern
        from gateway.policy.addresses import AddressPattern

        for text, address, expected in [
            ('"scanner"@corp.example', "scanner@corp.example", True),
            ("scanner@corp.example", '"scanner"@corp.example', True),
            ("*", "anyone@else.example", True),
            ("*@corp.example", "a@corp.example.", True),
            ("*@corp.example", "a@evilcorp.example", False),
        ]:
            self.assertEqual(sender_matches(address, [validate_pattern(text)]), expected, (text, address))
            self.assertEqual(AddressPattern.parse(text, "allow").matches(address), expected, (text, address))

    def test_sendmail_full_name_with_comma_is_one_mailbox(self):
        from tests.sendmail_helpers import daemon_spool

        spool = daemon_spool(self, os.path.abspath(self.mktemp()))
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            status = sendmail.main(["-F", "Doe, John", "-f", "john@corp.example", "--spool", spool, "a@example.com"],
                                   stdin=io.BytesIO(b"Subject: s\n\nb\n"), environ={})
        finally:
            sys.stderr = stderr
        self.assertEqual(status, 0)
        disk = SpoolDisk(spool)
        [queue_id] = disk.queue_ids(disk.layout.incoming)
        entry = disk.load(queue_id, directory=disk.layout.incoming)
        with open(entry.message_path, "rb") as f:
            data = f.read()
        self.assertIn(b'\r\nFrom: "Doe, John" <john@corp.example>\r\n', data)
        self.assertEqual(entry.sending_mailbox, "john@corp.example")


class IntakeTests(TestCase):
    """Findings 1 and 2 over a real STARTTLS + AUTH listener."""

    timeout = 60

    def send(self, server, message: bytes, sender="alice@corp.example"):
        def blocking():
            context = server.client_context()
            with smtplib.SMTP(HOST, server.port, timeout=30) as client:
                client.ehlo("client.test")
                client.starttls(context=context)
                client.ehlo("client.test")
                client.login("alice", ALICE_PASSWORD)
                client.mail(sender)
                client.rcpt("team@corp.example")
                return client.data(message)
        return deferToThread(blocking)

    @inlineCallbacks
    def test_space_before_colon_from_refused_over_starttls_auth(self):
        server = yield SecureServer.start(self)
        code, text = yield self.send(server, SPACE_COLON_FROM)
        yield server.sessions_closed()
        self.assertEqual((code, text[:5]), (550, b"5.6.0"), text)
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_message_opening_with_an_indented_line_refused_over_starttls_auth(self):
        # The gateway would read no header section here, the email package (and plugins using
        # it) the From after the indented first line: ambiguity is refused, not guessed.
        server = yield SecureServer.start(self)
        code, text = yield self.send(
            server, b" X-Junk: y\r\nFrom: CEO <ceo@corp.example>\r\nSubject: q\r\n\r\nbody\r\n")
        yield server.sessions_closed()
        self.assertEqual((code, text[:5]), (550, b"5.6.0"), text)
        self.assertIn(b"indented line", text)
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_space_before_colon_from_refused_on_a_trusted_listener_with_trusted_senders(self):
        import ipaddress

        server = yield SecureServer.start(self, tls="none", auth="none",
                                          trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),),
                                          trusted_senders=("printer@corp.example",))

        def blocking():
            with smtplib.SMTP(HOST, server.port, timeout=30) as client:
                client.ehlo("printer.test")
                client.mail("printer@corp.example")
                client.rcpt("team@corp.example")
                return client.data(b"To: team@corp.example\r\nSubject: scan\r\nFrom : CEO <ceo@corp.example>\r\n\r\nscan\r\n")

        code, text = yield deferToThread(blocking)
        yield server.sessions_closed()
        self.assertEqual((code, text[:5]), (550, b"5.6.0"), text)
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_space_before_colon_from_refused_behind_a_proxy_listener(self):
        import ipaddress

        from tests.security_harness import RawClient

        server = yield SecureServer.start(self, name="behind-lb", endpoint=f"haproxy:tcp:0:interface={HOST}", tls="none",
                                          auth="none", trusted_networks=(ipaddress.ip_network("203.0.113.0/24"),),
                                          trusted_senders=("printer@corp.example",))

        def blocking():
            c = RawClient(server.port)
            try:
                c.send(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n")
                c.reply()
                c.command("EHLO printer.test")
                c.command("MAIL FROM:<printer@corp.example>")
                c.command("RCPT TO:<team@corp.example>")
                c.command("DATA")
                c.send(b"To: team@corp.example\r\nFrom : CEO <ceo@corp.example>\r\n\r\nscan\r\n.\r\n")
                reply = c.reply()
                c.command("QUIT")
                return reply
            finally:
                c.close()

        code, lines = yield deferToThread(blocking)
        yield server.sessions_closed()
        self.assertEqual(code, 550, lines)
        self.assertIn("5.6.0", lines[0])
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_encoded_word_flood_refused_over_starttls_auth(self):
        server = yield SecureServer.start(self)
        code, text = yield self.send(server, encoded_word_from() + b"To: team@corp.example\r\n\r\nbody\r\n")
        yield server.sessions_closed()
        self.assertEqual((code, text[:5]), (552, b"5.3.4"), text)
        self.assertIn(b"encoded words", text)
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_accepted_message_records_its_sending_mailbox(self):
        server = yield SecureServer.start(self)
        code, _ = yield self.send(server, b"From: Alice <Alice@Corp.Example.>\r\nTo: team@corp.example\r\n\r\nhi\r\n")
        yield server.sessions_closed()
        self.assertEqual(code, 250)
        [(entry, _)] = server.spool.messages
        self.assertEqual(entry.sending_mailbox, "alice@corp.example")
