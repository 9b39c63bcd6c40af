"""
The idle timer of an SMTP session (issue 13): it is armed once and pushed forward by each
command or DATA chunk, and left armed while the session waits for its own answer (a policy,
the spool) instead of being cancelled and made again for every message.  What the client
sees is unchanged: an idle client is cut off ``idle_timeout`` after its last input, or after
our last pending answer; an active client, or one waiting for us, is not.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.smtp_helpers import DeferredPolicy, Session, make_factory
from tests.test_smtp_protocol import MESSAGE

TIMEOUT_REPLY = b"421 4.4.2 gw.test Error: timeout exceeded"


class IdleTimerTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()

    def session(self, policies: tuple = (), **limits: Any) -> Session:
        limits.setdefault("idle_timeout", 60)
        s = Session(make_factory(policies=policies, clock=self.clock, limits=limits))
        self.addCleanup(s.close)
        return s

    def idle_calls(self) -> list:
        """The pending delayed calls that come due within the idle period (the idle timer)."""
        return [c for c in self.clock.getDelayedCalls() if c.getTime() - self.clock.seconds() <= 60]

    def assert_cut_off_after(self, s: Session, seconds: float) -> None:
        self.clock.advance(seconds - 0.5)
        self.assertFalse(s.closed, "cut off too early")
        self.assertEqual(s.lines(), [])
        self.clock.advance(1)
        self.assertEqual(s.lines(), [TIMEOUT_REPLY])
        self.assertTrue(s.closed)

    def test_idle_client_is_cut_off_on_time(self):
        s = self.session()
        s.ehlo()
        self.clock.advance(30)
        s.cmd("NOOP")
        self.assert_cut_off_after(s, 60)

    def test_active_client_is_not_cut_off(self):
        s = self.session(session_timeout=10_000)
        s.ehlo()
        for _ in range(20):  # 20 x 59 s: far beyond the idle timeout, never idle for it
            self.clock.advance(59)
            s.envelope()
            self.assertEqual(s.cmd("DATA")[:3], b"354")
            self.clock.advance(59)
            s.send(MESSAGE[:10])
            self.clock.advance(59)
            self.assertEqual([line[:3] for line in s.send(MESSAGE[10:] + b".\r\n")], [b"250"])
        self.assertFalse(s.closed)
        self.assert_cut_off_after(s, 60)

    def test_data_bytes_keep_the_client_active(self):
        s = self.session(data_timeout=10_000, session_timeout=10_000)
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        for _ in range(10):
            self.clock.advance(59)
            self.assertEqual(s.send(b"more body\r\n"), [])
        self.assertFalse(s.closed)
        self.assert_cut_off_after(s, 60)

    def test_long_wait_for_our_answer_then_full_idle_period(self):
        policy = DeferredPolicy(steps=("on_mail_from",))
        s = self.session(policies=(policy,))
        s.ehlo()
        s.send(b"MAIL FROM:<a@b.test>\r\n")
        self.clock.advance(600)  # the idle timer came due while we were deciding
        self.assertFalse(s.closed)
        policy.fire_all()
        self.assertEqual(s.lines(), [b"250 2.1.0 Sender ok"])
        self.assert_cut_off_after(s, 60)

    def test_short_wait_for_our_answer_then_full_idle_period(self):
        policy = DeferredPolicy(steps=("on_mail_from",))
        s = self.session(policies=(policy,))
        s.ehlo()
        s.send(b"MAIL FROM:<a@b.test>\r\n")
        self.clock.advance(45)
        policy.fire_all()
        self.assertEqual(s.lines(), [b"250 2.1.0 Sender ok"])
        self.assert_cut_off_after(s, 60)

    def test_the_idle_timer_is_not_made_again_for_each_message(self):
        policy = DeferredPolicy(steps=("on_message",))
        s = self.session(policies=(policy,))
        s.ehlo()
        [timer] = self.idle_calls()
        for _ in range(3):
            s.envelope()
            s.cmd("DATA")
            s.send(MESSAGE + b".\r\n")
            self.clock.advance(10)
            policy.fire_all()
            self.assertEqual([line[:3] for line in s.lines()], [b"250"])
            self.assertEqual(self.idle_calls(), [timer])
            self.assertTrue(timer.active())
        self.assert_cut_off_after(s, 60)

    def test_no_timers_left_after_a_close_during_a_wait(self):
        policy = DeferredPolicy(steps=("on_mail_from",))
        s = self.session(policies=(policy,))
        s.ehlo()
        s.send(b"MAIL FROM:<a@b.test>\r\n")
        s.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        policy.fire_all()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DataTimerTests(SynchronousTestCase):
    """One DATA timer per session, pushed forward at each DATA instead of made again."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.s = Session(make_factory(clock=self.clock, limits={"idle_timeout": 60, "data_timeout": 100,
                                                                "session_timeout": 100_000}))
        self.addCleanup(self.s.close)
        self.s.ehlo()

    def start_data(self) -> None:
        self.s.envelope()
        self.assertEqual(self.s.cmd("DATA")[:3], b"354")

    def test_each_data_has_its_full_limit(self):
        self.start_data()
        self.clock.advance(50)
        self.assertEqual([line[:3] for line in self.s.send(MESSAGE + b".\r\n")], [b"250"])
        self.clock.advance(40)  # t = 90: the first DATA's limit would come at t = 100
        self.start_data()
        for _ in range(4):  # a drip that keeps the idle timer happy, up to t = 189
            self.clock.advance(24.75)
            self.assertEqual(self.s.send(b"line\r\n"), [])
        self.assertFalse(self.s.closed)
        self.clock.advance(1.5)  # t = 190.5: this DATA's limit
        self.assertEqual(self.s.lines(), [TIMEOUT_REPLY])
        self.assertTrue(self.s.closed)

    def test_the_limit_of_an_ended_data_does_not_close_the_session(self):
        self.start_data()
        self.assertEqual([line[:3] for line in self.s.send(MESSAGE + b".\r\n")], [b"250"])
        for _ in range(5):  # t = 250: well past the DATA limit, never idle
            self.clock.advance(50)
            self.assertEqual(self.s.cmd("NOOP"), b"250 2.0.0 Ok")
        self.assertFalse(self.s.closed)

    def test_the_data_timer_is_not_made_again_for_each_message(self):
        self.start_data()
        before = set(self.clock.getDelayedCalls())
        self.s.send(MESSAGE + b".\r\n")
        for _ in range(3):
            self.clock.advance(5)
            self.start_data()
            self.assertEqual(set(self.clock.getDelayedCalls()), before)
            self.s.send(MESSAGE + b".\r\n")
