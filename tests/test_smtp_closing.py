"""
Unit tests of L{gateway.smtp.closing.sessions_closed}, the bounded wait a stopping gateway (single
process or intake worker) makes until the sessions it closed have written their last replies.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.closing import SESSION_FLUSH_LIMIT, sessions_closed
from tests.smtp_helpers import Session, make_factory


class SessionsClosedTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def test_no_session_fires_at_once(self):
        self.assertEqual(self.successResultOf(sessions_closed([make_factory(clock=self.clock)], self.clock)), 0)

    def test_fires_when_the_last_session_of_every_listener_has_gone(self):
        first, second = make_factory(clock=self.clock), make_factory(clock=self.clock)
        a, b, c = Session(first), Session(first), Session(second)
        for factory in (first, second):
            factory.close_sessions()
        waiting = sessions_closed([first, second], self.clock)
        for session in (a, b):
            self.assertTrue(session.closed)
            self.assertIn(b"\r\n421 4.3.2 ", session.transport.value())
            session.close()
        self.assertNoResult(waiting)  # the second listener's session is still writing
        c.close()
        self.assertEqual(self.successResultOf(waiting), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_session_that_never_goes_is_given_up_after_the_limit(self):
        factory = make_factory(clock=self.clock)
        stuck = Session(factory)
        waiting = sessions_closed([factory], self.clock)
        self.clock.advance(SESSION_FLUSH_LIMIT - 0.1)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(waiting), 1)
        # A session that goes afterwards finds no waiter left behind.
        stuck.close()
        self.assertEqual(factory._closed_waiters, [])
