"""
What a session knows about its client is worked out once (issue 13): the session view's client
part (peer address parsed, trusted networks looked up) is built once and again only when what
it shows changes (EHLO name, TLS, login, a PROXY header's new peer), and the factory does not parse the same client address
again for every connection.  The policies still see every change (EHLO name, TLS, login).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp import factory as factory_module
from gateway.smtp import protocol as protocol_module
from tests.smtp_helpers import ScriptedPolicy, Session, make_factory

MESSAGE = b"From: a@b.test\r\nTo: r@x.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n"


class SessionViewTests(SynchronousTestCase):

    def session(self, **kw: Any) -> Session:
        self.policy = ScriptedPolicy()
        s = Session(make_factory(clock=Clock(), policies=(self.policy,), trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),), **kw),
                    transport=StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000)))
        self.addCleanup(s.close)
        return s

    def test_a_message_parses_the_peer_once(self):
        parsed: list[Any] = []
        real = protocol_module.peer_address

        def counting(peer: Any) -> tuple[str, int]:
            parsed.append(peer)
            return real(peer)

        s = self.session()
        s.ehlo()
        self.patch(protocol_module, "peer_address", counting)
        s.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n")
        parsed.clear()  # DATA records the client address for the Received header, once
        lines = s.send(MESSAGE)
        self.assertTrue(lines[-1].startswith(b"250 2.0.0 Ok: queued as "), lines)
        self.assertEqual(parsed, [], "the end-of-data view parsed the peer again")

    def test_the_view_follows_a_new_peer(self):
        s = self.session()
        s.ehlo()
        before = s.proto._client_view()
        s.transport.peerAddr = IPv4Address("TCP", "198.51.100.7", 5555)
        after = s.proto._client_view()
        self.assertEqual((before.client_address, before.trusted_network), ("192.0.2.10", True))
        self.assertEqual((after.client_address, after.client_port, after.trusted_network), ("198.51.100.7", 5555, False))

    def test_the_client_view_is_built_once_while_nothing_changes(self):
        s = self.session()
        s.ehlo()
        s.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n" + MESSAGE)
        s.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<r@x.test>\r\n")
        views = [call[1] for call in self.policy.calls]
        self.assertEqual([c[0] for c in self.policy.calls],
                         ["on_connect", "on_mail_from", "on_rcpt_to", "on_message", "on_mail_from", "on_rcpt_to"])
        # Same client facts everywhere; the envelope is each step's own.
        self.assertIs(s.proto._client_view(), s.proto._client_view())
        for view in views:
            self.assertEqual(_client_part(view), _client_part(views[0]))
            self.assertTrue(view.trusted_network)
        self.assertEqual((views[1].sender, views[1].recipients), ("a@b.test", ()))
        self.assertEqual((views[2].sender, views[2].recipients), ("a@b.test", ()))
        self.assertEqual((views[3].sender, views[3].recipients), ("a@b.test", ("r@x.test",)))

    def test_the_view_follows_a_new_ehlo_name(self):
        s = self.session()
        s.ehlo("first.test")
        before = s.proto._client_view()
        s.ehlo("second.test")
        after = s.proto._client_view()
        self.assertEqual((before.client_name, after.client_name), ("first.test", "second.test"))
        s.send(b"MAIL FROM:<a@b.test>\r\n")
        self.assertEqual(self.policy.calls[-1][1].client_name, "second.test")


class FactoryAddressMemoTests(SynchronousTestCase):

    def test_consecutive_connections_from_one_client_parse_its_address_once(self):
        parsed: list[str] = []
        real = factory_module.is_trusted

        def counting(address: str, networks: Any) -> bool:
            parsed.append(address)
            return real(address, networks)

        self.patch(factory_module, "is_trusted", counting)
        factory = make_factory(clock=Clock(), trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),))
        sessions = [Session(factory) for _ in range(3)]
        for s in sessions:
            self.addCleanup(s.close)
            s.ehlo()
            self.assertTrue(s.proto.session_view().trusted_network)
        other = Session(factory, peer="198.51.100.7")
        self.addCleanup(other.close)
        other.ehlo()
        self.assertFalse(other.proto.session_view().trusted_network)
        self.assertEqual(parsed, ["192.0.2.10", "198.51.100.7"])


def _client_part(view: Any) -> tuple:
    return (view.listener, view.client_address, view.client_port, view.client_name, view.tls, view.identity,
            view.trusted_network)


class ReplyTextTests(SynchronousTestCase):
    """clean_text's fast path for printable ASCII gives what the character-by-character rule gives."""

    def test_same_as_the_character_rule_for_every_character(self):
        from gateway.smtp.replies import clean_text

        def by_character(text: str) -> str:
            return "".join(c if " " <= c <= "~" else "?" for c in text)[:300] or "-"

        samples = ["", " ", "Ok", "a~b", "tab\there", "new\r\nline", "del\x7f", "caf\u00e9", "\u2028", "x" * 400]
        samples += [f"a{chr(i)}b" for i in range(0, 0x3000)]
        for text in samples:
            self.assertEqual(clean_text(text), by_character(text), repr(text))
