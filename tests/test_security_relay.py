"""
RelayAccessPolicy: no open relay, per-listener auth modes, trusted networks, and sender
identity for envelope and headers.
"""

from __future__ import annotations

import ipaddress
from email.parser import BytesHeaderParser
from email.policy import SMTP

from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.relay import RelayAccessPolicy
from gateway.config.errors import ConfigError
from gateway.config.model import ListenerConfig
from gateway.policy.chain import PolicyChain
from gateway.policy.interfaces import (
    Continue,
    Identity,
    MessageView,
    Reject,
    SessionView,
)


def listener(**kwargs):
    values = dict(name="l", endpoint="tcp:0", trusted_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")))
    values.update(kwargs)
    return ListenerConfig(**values)


def session(address="203.0.113.5", identity=None, sender=None):
    return SessionView(listener="l", client_address=address, client_port=1, identity=identity, sender=sender)


def message(header_text: str):
    raw = header_text.replace("\n", "\r\n").encode() + b"\r\n"
    return MessageView(headers=BytesHeaderParser(policy=SMTP).parsebytes(raw), header_bytes=raw, size=len(raw), open_body=None)


ALICE = Identity("alice", ("alice@corp.example", "*@alerts.corp.example"))


class AccessTests(SynchronousTestCase):
    def assertReject(self, verdict, code, status):
        self.assertIsInstance(verdict, Reject)
        self.assertEqual((verdict.code, verdict.status), (code, status))

    def test_untrusted_without_auth_offered_gets_554(self):
        policy = RelayAccessPolicy(listener(auth="none"))
        self.assertReject(policy.on_mail_from(session(), "x@corp.example"), 554, "5.7.1")
        self.assertReject(policy.on_rcpt_to(session(), "victim@elsewhere.example"), 554, "5.7.1")

    def test_untrusted_when_auth_offered_gets_530(self):
        policy = RelayAccessPolicy(listener(auth="optional"))
        self.assertReject(policy.on_mail_from(session(), "x@corp.example"), 530, "5.7.0")

    def test_trusted_network_relays_without_auth(self):
        policy = RelayAccessPolicy(listener(auth="optional"))
        for address in ("10.1.2.3", "::ffff:10.1.2.3", "2001:db8::7"):
            self.assertEqual(policy.on_mail_from(session(address), "x@corp.example"), Continue())

    def test_auth_required_refuses_even_trusted_networks(self):
        policy = RelayAccessPolicy(listener(auth="required"))
        self.assertReject(policy.on_mail_from(session("10.1.2.3"), "x@corp.example"), 530, "5.7.0")
        self.assertEqual(policy.on_mail_from(session("10.1.2.3", ALICE), "alice@corp.example"), Continue())

    def test_authenticated_relays_from_anywhere(self):
        policy = RelayAccessPolicy(listener(auth="optional"))
        self.assertEqual(policy.on_mail_from(session(identity=ALICE), "alice@corp.example"), Continue())
        self.assertEqual(policy.on_rcpt_to(session(identity=ALICE), "anyone@else.example"), Continue())

    def test_default_listener_is_closed(self):
        policy = RelayAccessPolicy(ListenerConfig(name="d", endpoint="tcp:0"))
        self.assertReject(policy.on_mail_from(session("127.0.0.1"), "x@y.example"), 554, "5.7.1")

    def test_non_ip_peer_is_not_trusted(self):
        self.assertFalse(RelayAccessPolicy(listener()).is_trusted("/run/graphsmtp.sock"))

    def test_message_step_rechecks_access(self):
        policy = RelayAccessPolicy(listener(auth="optional"))
        self.assertReject(policy.on_message(session(), message("From: a@b.example\n")), 530, "5.7.0")


class SenderIdentityTests(SynchronousTestCase):
    def setUp(self):
        self.policy = RelayAccessPolicy(listener(auth="optional", trusted_senders=("printer@corp.example",)))

    def assertRefused(self, verdict, *fragments, status="5.7.1"):
        self.assertIsInstance(verdict, Reject)
        self.assertEqual((verdict.code, verdict.status), (550, status))
        for f in fragments:
            self.assertIn(f, verdict.text)

    def test_login_envelope_sender(self):
        self.assertEqual(self.policy.on_mail_from(session(identity=ALICE), "Alice@Corp.Example"), Continue())
        self.assertEqual(self.policy.on_mail_from(session(identity=ALICE), "db@alerts.corp.example"), Continue())
        self.assertRefused(self.policy.on_mail_from(session(identity=ALICE), "ceo@corp.example"), "<ceo@corp.example>", "login alice")

    def test_null_sender_allowed_but_headers_still_checked(self):
        self.assertEqual(self.policy.on_mail_from(session(identity=ALICE), ""), Continue())
        self.assertRefused(self.policy.on_message(session(identity=ALICE, sender=""), message("From: ceo@corp.example\n")), "From header")

    def test_header_from_spoof_with_good_envelope(self):
        s = session(identity=ALICE, sender="alice@corp.example")
        self.assertEqual(self.policy.on_message(s, message("From: Alice <alice@corp.example>\nTo: x@y.example\n")), Continue())
        # A display name showing another address is refused by the mail grammar (issue 8).
        self.assertRefused(self.policy.on_message(s, message('From: "alice@corp.example" <ceo@corp.example>\n')), "display name", status="5.6.0")
        self.assertRefused(self.policy.on_message(s, message('From: Alice <ceo@corp.example>\n')), "From header address <ceo@corp.example>")
        self.assertRefused(self.policy.on_message(s, message("From: alice@corp.example, ceo@corp.example\n")), "without a Sender", status="5.6.0")
        self.assertRefused(self.policy.on_message(s, message("From: alice@corp.example, ceo@corp.example\nSender: alice@corp.example\n")), "ceo@corp.example")
        self.assertRefused(self.policy.on_message(s, message("From: alice@corp.example\nSender: ceo@corp.example\n")), "Sender header")

    def test_duplicate_or_malformed_from_refused(self):
        s = session(identity=ALICE, sender="alice@corp.example")
        self.assertRefused(self.policy.on_message(s, message("From: alice@corp.example\nFrom: ceo@corp.example\n")), "more than one From", status="5.6.0")
        self.assertRefused(self.policy.on_message(s, message("From: alice@corp.example <ceo@corp.example>\n")), status="5.6.0")
        self.assertRefused(self.policy.on_message(s, message("From: undisclosed\n")), status="5.6.0")

    def test_missing_from_is_left_to_others(self):
        s = session(identity=ALICE, sender="alice@corp.example")
        self.assertEqual(self.policy.on_message(s, message("Subject: hi\n")), Continue())

    def test_trusted_network_senders(self):
        s = session("10.0.0.9")
        self.assertEqual(self.policy.on_mail_from(s, "printer@corp.example"), Continue())
        self.assertRefused(self.policy.on_mail_from(s, "ceo@corp.example"), "this network")
        self.assertRefused(self.policy.on_message(session("10.0.0.9", sender="printer@corp.example"), message("From: ceo@corp.example\n")))

    def test_unrestricted_identity(self):
        anyone = Identity("relay-admin")
        self.assertEqual(self.policy.on_mail_from(session(identity=anyone), "whoever@x.example"), Continue())
        self.assertEqual(self.policy.on_message(session(identity=anyone, sender="w@x.example"), message("From: other@y.example\n")), Continue())

    def test_reply_text_cannot_inject_lines(self):
        verdict = self.policy.on_mail_from(session(identity=ALICE), "evil\r\n250 ok@x.example")
        self.assertNotIn("\r", verdict.text)
        self.assertNotIn("\n", verdict.text)

    def test_bad_trusted_senders_is_config_error(self):
        e = self.assertRaises(ConfigError, RelayAccessPolicy, listener(trusted_senders=("corp.example",)))
        self.assertEqual(e.key, "listener.l.trusted_senders")


class ChainTests(SynchronousTestCase):
    """First in the chain, a refusal stops later (possibly accepting) policies."""

    def test_refusal_ends_step(self):
        asked = []

        class Accepting:
            def on_mail_from(self, session, sender):
                asked.append(sender)
                from gateway.policy.interfaces import Accept
                return Accept()

        chain = PolicyChain([RelayAccessPolicy(listener(auth="none")), Accepting()])
        result = self.successResultOf(chain.on_mail_from(session(), "x@y.example"))
        self.assertFalse(result.allowed)
        self.assertEqual(asked, [])
