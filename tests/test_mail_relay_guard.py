"""
The relay guard (gateway.auth.relay) on the one mail grammar: exact replies, what is logged,
which headers and patterns are judged, and the boundaries of its reply-text cleaning.
"""

from __future__ import annotations

import ipaddress

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.relay import RelayAccessPolicy, _shown
from gateway.config.errors import ConfigError
from gateway.config.model import ListenerConfig
from gateway.mail.message import parse_header_section
from gateway.mail.patterns import SenderPattern
from gateway.policy.interfaces import (
    Continue,
    Identity,
    MessageView,
    Reject,
    SessionView,
)
from gateway.testing.policy import make_message

NETWORK = ipaddress.ip_network("10.0.0.0/8")


def policy(log=None, **kwargs):
    values = dict(name="sub", endpoint="tcp:0", auth="optional", trusted_networks=(NETWORK,))
    values.update(kwargs)
    return RelayAccessPolicy(ListenerConfig(**values), log=log)


def session(address="203.0.113.5", identity=None, sender=None):
    return SessionView(listener="sub", client_address=address, client_port=1, identity=identity, sender=sender)


class Events:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def logger(self):
        return Logger(observer=self)


ALICE = Identity("alice", ("alice@corp.example",))


class ReplyTests(SynchronousTestCase):
    def test_exact_replies_for_access(self):
        self.assertEqual(policy(auth="none").on_mail_from(session(), "a@b.example"), Reject(554, "5.7.1", "Relay access denied"))
        self.assertEqual(policy(auth="optional").on_rcpt_to(session(), "a@b.example"), Reject(530, "5.7.0", "Authentication required"))
        self.assertEqual(policy(auth="required").on_message(session("10.0.0.1"), make_message(b"From: a@b.example\r\n\r\n")),
                         Reject(530, "5.7.0", "Authentication required"))
        self.assertEqual(policy(auth="none").on_rcpt_to(session("10.0.0.1"), "a@b.example"), Continue())
        self.assertEqual(policy(auth="none").on_connect(session()), Continue())
        self.assertTrue(policy(auth="optional").auth_offered)
        self.assertTrue(policy(auth="required").auth_offered)
        self.assertFalse(policy(auth="none").auth_offered)

    def test_trust_is_by_network(self):
        p = policy()
        self.assertTrue(p.is_trusted("10.255.255.255"))
        self.assertTrue(p.is_trusted("[10.0.0.1]"))
        self.assertFalse(p.is_trusted("11.0.0.0"))
        self.assertFalse(p.is_trusted(""))

    def test_exact_replies_for_senders(self):
        s = session(identity=ALICE, sender="alice@corp.example")
        self.assertEqual(policy().on_mail_from(session(identity=ALICE), "ceo@corp.example"),
                         Reject(550, "5.7.1", "Sender address <ceo@corp.example> is not allowed for login alice"))
        self.assertEqual(policy().on_message(session(identity=ALICE, sender="ceo@corp.example"), make_message(b"From: alice@corp.example\r\n\r\n")),
                         Reject(550, "5.7.1", "Sender address <ceo@corp.example> is not allowed for login alice"))
        self.assertEqual(policy().on_message(s, make_message(b"From: Alice <alice@corp.example>\r\nSender: ceo@corp.example\r\n\r\n")),
                         Reject(550, "5.7.1", "Sender header address <ceo@corp.example> is not allowed for login alice"))
        self.assertEqual(policy().on_message(s, make_message(b"From: alice@corp.example\r\nResent-Sender: ceo@corp.example\r\n\r\n")),
                         Reject(550, "5.7.1", "Resent-Sender header address <ceo@corp.example> is not allowed for login alice"))
        self.assertEqual(policy().on_message(s, make_message(b"From : ceo@corp.example\r\n\r\n")),
                         Reject(550, "5.6.0", "Message refused: white space before the colon in the From header field "
                                              "(obsolete syntax that mail parsers read differently)"))
        trusted = policy(trusted_senders=("printer@corp.example",))
        self.assertEqual(trusted.on_mail_from(session("10.0.0.1"), "x@corp.example"),
                         Reject(550, "5.7.1", "Sender address <x@corp.example> is not allowed for this network"))
        self.assertEqual(trusted.on_mail_from(session("10.0.0.1"), ""), Continue())
        self.assertEqual(trusted.on_message(session("10.0.0.1", sender=""), make_message(b"From: printer@corp.example\r\n\r\n")), Continue())

    def test_grammar_refusals_apply_even_without_patterns(self):
        unrestricted = session(identity=Identity("admin"), sender="a@b.example")
        self.assertEqual(policy().on_message(unrestricted, make_message(b"From: a@b.example\r\n\r\n")), Continue())
        verdict = policy().on_message(unrestricted, make_message(b"From: a@b.example\r\nFrom: c@d.example\r\n\r\n"))
        self.assertEqual((verdict.code, verdict.status), (550, "5.6.0"))
        limit = policy().on_message(unrestricted, make_message(b"X: 1\r\n" * 1001 + b"\r\n"))
        self.assertEqual(limit, Reject(552, "5.3.4", "Message refused: more than 1000 header fields"))

    def test_judged_header_on_the_view_is_what_counts(self):
        judged = parse_header_section(b"From: ceo@corp.example\r\n")
        view = MessageView(headers=None, header_bytes=b"From: alice@corp.example\r\n\r\n", size=0, open_body=None, mail=judged)
        verdict = policy().on_message(session(identity=ALICE, sender="alice@corp.example"), view)
        self.assertEqual(verdict.text, "From header address <ceo@corp.example> is not allowed for login alice")

    def test_patterns_may_be_parsed_or_text(self):
        parsed = Identity("alice", (SenderPattern.parse("*@corp.example"),))
        self.assertEqual(policy().on_mail_from(session(identity=parsed), "x@Corp.Example"), Continue())
        self.assertEqual(policy().on_mail_from(session(identity=Identity("a", ('"x"@corp.example',))), "x@corp.example"), Continue())

    def test_bad_trusted_senders(self):
        e = self.assertRaises(ConfigError, policy, trusted_senders=("nope",))
        self.assertEqual(e.key, "listener.sub.trusted_senders")
        self.assertIn("'nope'", str(e))
        self.assertEqual(policy(trusted_senders=("*",)).trusted_senders, (SenderPattern.parse("*"),))


class LogTests(SynchronousTestCase):
    def test_refusals_are_logged_once_with_who_and_why(self):
        events = Events()
        p = policy(log=events.logger())
        p.on_mail_from(session(identity=ALICE), "ceo@corp.example")
        p.on_rcpt_to(session(), "x@y.example")
        p.on_mail_from(session(identity=ALICE), "alice@corp.example")
        self.assertEqual(len(events.events), 2)
        first, second = events.events
        self.assertEqual((first["listener"], first["what"], first["client"], first["identity"], first["code"], first["status"]),
                         ("sub", "MAIL FROM:<ceo@corp.example>", "203.0.113.5", "alice", 550, "5.7.1"))
        self.assertIn("is not allowed for login alice", first["text"])
        self.assertEqual((second["what"], second["identity"], second["code"]), ("RCPT TO:<x@y.example>", "not authenticated", 530))
        p.on_message(session(identity=ALICE, sender="alice@corp.example"), make_message(b"From: ceo@corp.example\r\n\r\n"))
        self.assertEqual(events.events[-1]["what"], "message")
        p.on_message(session(), make_message(b"From: a@b.example\r\n\r\n"))
        self.assertEqual((events.events[-1]["what"], events.events[-1]["code"]), ("message", 530))
        p.on_message(session(identity=ALICE, sender="alice@corp.example"), make_message(b"From : a@b.example\r\n\r\n"))
        self.assertEqual((events.events[-1]["what"], events.events[-1]["code"]), ("message", 550))
        p.on_mail_from(session(), "x@y.example")
        self.assertEqual((events.events[-1]["what"], events.events[-1]["code"]), ("MAIL FROM:<x@y.example>", 530))
        self.assertEqual({e["log_format"] for e in events.events},
                         {"listener {listener}: refused {what} from {client} ({identity}): {code} {status} {text}"})


class ShownTests(SynchronousTestCase):
    def test_printable_and_bounded(self):
        self.assertEqual(_shown("a b\r\n\x7f~!"), "a?b???~!")
        self.assertEqual(_shown("x" * 200), "x" * 200)
        self.assertEqual(_shown("x" * 201), "x" * 200 + "...")
        self.assertEqual(_shown("é"), "?")
        self.assertEqual(_shown("!~"), "!~")
