"""
The SMTP session's one connection state (L{gateway.smtp.state}): the transition table on its
own, and the state a real session is in after each step of a conversation.
"""

from __future__ import annotations

import base64

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.interfaces import Reject
from gateway.smtp.state import (
    ALLOWED,
    FINISHING,
    GREETED,
    IllegalTransition,
    SessionState,
    transition,
)
from tests.smtp_helpers import (
    PASSWORD,
    DeferredPolicy,
    Session,
    StaticTLS,
    TLSStringTransport,
    make_factory,
    make_portal,
)

S = SessionState


class TransitionTableTests(SynchronousTestCase):
    def test_every_state_has_a_row(self):
        self.assertEqual(set(ALLOWED), set(SessionState))

    def test_allowed_moves(self):
        for current, targets in ALLOWED.items():
            for target in targets:
                self.assertIs(transition(current, target), target)

    def test_staying_is_always_allowed(self):
        for state in SessionState:
            self.assertIs(transition(state, state), state)

    def test_a_move_not_in_the_table_is_refused(self):
        self.assertRaises(IllegalTransition, transition, S.AWAITING_HELO, S.IN_TRANSACTION)
        self.assertRaises(IllegalTransition, transition, S.NEW, S.READY)
        self.assertRaises(IllegalTransition, transition, S.READY, S.RECEIVING_DATA)
        self.assertRaises(IllegalTransition, transition, S.AUTHENTICATING, S.IN_TRANSACTION)

    def test_any_state_may_be_lost(self):
        for state in SessionState:
            self.assertIs(transition(state, S.GONE), S.GONE)

    def test_a_finishing_session_stays_finishing(self):
        # An answer arriving after the close (a policy verdict, a login) changes nothing.
        for state in FINISHING:
            for target in SessionState:
                if target is not S.GONE:
                    self.assertIs(transition(state, target), state)

    def test_greeted_states(self):
        self.assertEqual(GREETED, {S.READY, S.AUTHENTICATING, S.IN_TRANSACTION, S.RECEIVING_DATA})


class SessionStateTests(SynchronousTestCase):
    def session(self, factory=None, **kw) -> Session:
        s = Session(factory or make_factory(), **kw)
        self.addCleanup(s.close)
        return s

    def test_a_built_session_is_new(self):
        self.assertIs(make_factory().buildProtocol(None).state, S.NEW)

    def test_a_whole_conversation(self):
        s = self.session()
        self.assertIs(s.proto.state, S.AWAITING_HELO)
        s.ehlo()
        self.assertIs(s.proto.state, S.READY)
        s.cmd("MAIL FROM:<a@sender.test>")
        self.assertIs(s.proto.state, S.IN_TRANSACTION)
        s.cmd("RCPT TO:<r@rcpt.test>")
        self.assertIs(s.proto.state, S.IN_TRANSACTION)
        self.assertEqual(s.cmd("DATA"), b"354 End data with <CR><LF>.<CR><LF>")
        self.assertIs(s.proto.state, S.RECEIVING_DATA)
        self.assertTrue(s.send(b"Subject: x\r\nFrom: a@sender.test\r\n\r\nhi\r\n.\r\n")[0].startswith(b"250 2.0.0 Ok: queued"))
        self.assertIs(s.proto.state, S.READY)
        self.assertIsNone(s.proto.transaction)
        s.cmd("QUIT")
        self.assertIs(s.proto.state, S.CLOSING)
        s.close()
        self.assertIs(s.proto.state, S.GONE)

    def test_rset_and_ehlo_end_the_transaction(self):
        s = self.session()
        s.ehlo()
        s.envelope()
        s.cmd("RSET")
        self.assertIs(s.proto.state, S.READY)
        s.envelope()
        s.ehlo()
        self.assertIs(s.proto.state, S.READY)
        self.assertIsNone(s.proto.transaction)

    def test_refused_greeting_leaves_the_session_ungreeted(self):
        policy = DeferredPolicy(steps=("on_connect",))
        s = self.session(make_factory(policies=(policy,)))
        s.ehlo()
        self.assertIs(s.proto.state, S.AWAITING_HELO, "not greeted while the connect step is pending")
        policy.fire_all(Reject("go away"))
        self.assertIs(s.proto.state, S.AWAITING_HELO)

    def test_refused_message_returns_to_ready(self):
        s = self.session()
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        self.assertEqual(s.send(b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n")[0][:3], b"550")
        self.assertIs(s.proto.state, S.READY)

    def test_auth_exchange(self):
        portal, _ = make_portal()
        factory = make_factory(portal=portal, auth="optional", allow_plaintext_auth=True)
        s = self.session(factory)
        s.ehlo()
        self.assertEqual(s.cmd("AUTH PLAIN"), b"334 ")
        self.assertIs(s.proto.state, S.AUTHENTICATING)
        self.assertEqual(s.cmd("*"), b"501 5.0.0 Authentication cancelled")
        self.assertIs(s.proto.state, S.READY)
        s.cmd("AUTH PLAIN")
        answer = base64.b64encode(b"\x00alice\x00" + PASSWORD).decode()
        self.assertEqual(s.cmd(answer), b"235 2.7.0 Authentication successful")
        self.assertIs(s.proto.state, S.READY)
        self.assertTrue(s.proto.authenticated)

    def test_over_long_auth_line_ends_the_exchange(self):
        portal, _ = make_portal()
        s = self.session(make_factory(portal=portal, auth="optional", allow_plaintext_auth=True))
        s.ehlo()
        s.cmd("AUTH LOGIN")
        self.assertIs(s.proto.state, S.AUTHENTICATING)
        self.assertEqual(s.send(b"A" * 13000 + b"\r\n"), [b"500 5.5.6 Authentication exchange line is too long"])
        self.assertIs(s.proto.state, S.READY)

    def test_starttls_requires_a_new_ehlo(self):
        factory = make_factory(tls_source=StaticTLS(object()), tls="starttls")
        s = self.session(factory, transport=TLSStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 1)))
        s.ehlo()
        self.assertEqual(s.cmd("STARTTLS"), b"220 2.0.0 Ready to start TLS")
        self.assertIs(s.proto.state, S.AWAITING_HELO)
        self.assertEqual(s.cmd("MAIL FROM:<a@b.test>"), b"503 5.5.1 Send EHLO/HELO first")

    def test_proxied_session_is_unidentified_until_the_header(self):
        factory = make_factory(endpoint="haproxy:tcp:0", proxy_protocol=True)
        s = self.session(factory)
        self.assertEqual(s.banner, [])
        self.assertIs(s.proto.state, S.UNIDENTIFIED)
        s.proto.proxy_header_received()
        self.assertIs(s.proto.state, S.AWAITING_HELO)
        self.assertEqual(s.lines(), [b"220 gw.test ESMTP"])

    def test_late_verdict_after_a_timeout_keeps_the_session_closing(self):
        clock = Clock()
        policy = DeferredPolicy(steps=("on_mail_from",))
        s = self.session(make_factory(policies=(policy,), clock=clock, limits={"session_timeout": 10}))
        s.ehlo()
        s.send(b"MAIL FROM:<a@b.test>\r\n")
        clock.advance(11)
        self.assertIs(s.proto.state, S.CLOSING)
        policy.fire_all()
        self.assertIs(s.proto.state, S.CLOSING)
        self.assertEqual(s.lines(), [b"421 4.4.2 gw.test Error: timeout exceeded"], "nothing answered after the close")

    def test_lost_connection(self):
        s = self.session()
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        s.proto.connectionLost(Failure(ConnectionDone()))
        self.assertIs(s.proto.state, S.GONE)
