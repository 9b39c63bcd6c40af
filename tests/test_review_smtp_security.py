"""
Review findings in the SMTP intake and relay guard (each test failed before its fix).
"""

from __future__ import annotations

import ipaddress

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.relay import RelayAccessPolicy
from gateway.config.model import ListenerConfig
from gateway.delivery.graph.mime import (
    HeaderSection,
    MessageFormatError,
    choose_mailbox,
    split_fields,
)
from gateway.policy.chain import PolicyChain
from gateway.smtp.addresses import parse_helo, parse_mail_from, parse_rcpt_to
from gateway.testing.memory_spool import MemorySpool
from tests.test_smtp_support import HOSTNAME, Session, TrackingFactory, make_factory


class AddressLiteralZoneTests(SynchronousTestCase):
    """
    ``ipaddress.IPv6Address`` accepts a zone id (``%...``) holding any text, bare LF included.
    RFC 5321 address literals have no zone id; accepting one let a HELO name (which goes into
    the Received header) or an envelope address (DSN ``To:``, capture headers) carry a line break.
    """

    INJECTED = b"[IPv6:fe80::1%x\nX-Injected: yes]"

    def test_helo_with_zone_id_refused(self):
        self.assertIsNone(parse_helo(self.INJECTED))
        self.assertIsNone(parse_helo(b"[IPv6:fe80::1%eth0]"))
        self.assertEqual(parse_helo(b"[IPv6:2001:db8::1]"), "[IPv6:2001:db8::1]")

    def test_envelope_addresses_with_zone_id_refused(self):
        argument, problem = parse_mail_from(b"FROM:<a@" + self.INJECTED + b">")
        self.assertIsNone(argument)
        self.assertEqual(problem.code, 501)
        argument, problem = parse_rcpt_to(b"TO:<a@" + self.INJECTED + b">")
        self.assertIsNone(argument)
        self.assertEqual(problem.code, 501)

    def test_no_header_injection_through_ehlo(self):
        s = Session(make_factory())
        self.addCleanup(s.close)
        reply = s.send(b"EHLO " + self.INJECTED + b"\r\n")
        self.assertEqual(reply, [b"501 5.5.4 Invalid HELO/EHLO name: a domain or address literal is required"])


def _guarded_factory(**listener):
    config = ListenerConfig(
        name="devices", endpoint="tcp:0", auth="none",
        trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),),
        trusted_senders=("scanner@corp.example",), **listener,
    )
    chain = PolicyChain((), guard=RelayAccessPolicy(config))
    return TrackingFactory(config, HOSTNAME, MemorySpool(), chain, Clock())


class HiddenFromHeaderTests(SynchronousTestCase):
    """
    A header field with white space before the colon (RFC 5322 obsolete syntax) is invisible to
    the ``email`` parser the relay guard reads From/Sender with (it drops ``From :`` and ends the
    header section at ``Subject :``), yet it is stored as sent, and the Graph deliverer's header
    reader takes it as a From field and sends through that mailbox.
    """

    def send(self, headers: bytes) -> bytes:
        factory = _guarded_factory()
        s = Session(factory, peer="192.0.2.7")
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope("scanner@corp.example", "someone@corp.example")
        self.assertEqual(s.cmd("DATA")[:3], b"354")
        reply = s.send(headers + b"\r\nbody\r\n.\r\n")[-1]
        return reply, factory.spool.messages

    def test_deliverer_refuses_the_hidden_from_of_an_old_entry(self):
        # Since issue 8 the deliverer reads headers through gateway.mail too: an entry written
        # before the intake recorded its sending mailbox is judged, and refused, the same way.
        raw = b"Subject : hi\r\nFrom: ceo@corp.example\r\n"
        section = HeaderSection(tuple(split_fields(raw)), 0, 0)
        self.assertRaises(MessageFormatError, choose_mailbox, section, "scanner@corp.example", "header-from")

    def test_from_with_space_before_colon_refused(self):
        reply, stored = self.send(b"From : ceo@corp.example\r\nSubject: hi\r\n")
        self.assertEqual(reply[:9], b"550 5.6.0")
        self.assertEqual(stored, [])

    def test_from_after_field_with_space_before_colon_refused(self):
        reply, stored = self.send(b"Subject : hi\r\nFrom: ceo@corp.example\r\n")
        self.assertEqual(reply[:9], b"550 5.6.0")
        self.assertEqual(stored, [])

    def test_permitted_from_still_accepted(self):
        reply, stored = self.send(b"Subject: hi\r\nFrom: Scanner <scanner@corp.example>\r\n")
        self.assertEqual(reply[:9], b"250 2.0.0")
        self.assertEqual(len(stored), 1)


class RecipientOvershootTests(SynchronousTestCase):
    """
    ``452 4.5.3 Too many recipients`` asks the client to send the rest in another transaction
    (RFC 5321 §4.5.3.1.10).  Counting each one as a session error closed the session with 421
    after ``max_errors`` of them, so a pipelining client with a long list lost the whole
    transaction, and lost it again on every retry.
    """

    def test_too_many_recipients_does_not_end_the_session(self):
        factory = make_factory(limits={"max_recipients": 5, "max_errors": 3})
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        self.assertEqual(s.cmd("MAIL FROM:<a@sender.test>")[:3], b"250")
        rcpts = b"".join(b"RCPT TO:<r%d@rcpt.test>\r\n" % i for i in range(20))
        replies = s.send(rcpts + b"DATA\r\n")
        self.assertEqual(replies[:5], [b"250 2.1.5 Recipient ok"] * 5)
        self.assertEqual(replies[5:20], [b"452 4.5.3 Too many recipients"] * 15)
        self.assertEqual(replies[20][:3], b"354")
        s.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        [(entry, _)] = factory.spool.messages
        self.assertEqual(len(entry.envelope.recipients), 5)
        self.assertFalse(s.closed)

    def test_endless_recipients_still_bounded(self):
        factory = make_factory(limits={"max_recipients": 1, "max_errors": 3})
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        s.cmd("MAIL FROM:<a@sender.test>")
        s.send(b"".join(b"RCPT TO:<r%d@rcpt.test>\r\n" % i for i in range(3000)))
        self.assertTrue(s.closed)
