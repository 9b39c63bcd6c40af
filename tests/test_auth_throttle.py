"""
Failed-login throttling and the throttled portal: growing delays, lockout as LoginThrottled,
counters, per-client keys (PROXY-aware lookup), and login logs without passwords.
"""

from __future__ import annotations

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.checkers import UsersFileChecker
from gateway.auth.portal import ThrottledPortal
from gateway.auth.realm import IdentityRealm
from gateway.auth.throttle import LoginThrottle, ThrottleSettings, throttle_key
from gateway.config.users import UsersStore
from gateway.policy.interfaces import (
    IAuthenticatedIdentity,
    Identity,
    LoginThrottled,
    SessionView,
)
from gateway.testing.logs import LogCapture
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.auth_helpers import cheap_hash, make_users_file

PASSWORD = "correct horse battery staple"
WRONG = "Tr0ub4dor&3-wrong"


class ThrottleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, ThrottleSettings(max_failures=4, window=600, base_delay=1, max_delay=3))

    def test_delays_grow_then_lockout(self):
        outcomes = [self.throttle.record_failure("1.2.3.4") for _ in range(4)]
        self.assertEqual([o.delay for o in outcomes[:3]], [1, 2, 3])
        self.assertEqual([o.locked_out for o in outcomes], [False, False, False, True])
        self.assertTrue(self.throttle.is_locked_out("1.2.3.4"))
        self.assertFalse(self.throttle.is_locked_out("1.2.3.5"))

    def test_lockout_expires_with_window(self):
        for _ in range(4):
            self.throttle.record_failure("1.2.3.4")
            self.clock.advance(10)
        self.clock.advance(600 - 40 + 1)
        self.assertFalse(self.throttle.is_locked_out("1.2.3.4"))

    def test_success_does_not_reset(self):
        for _ in range(3):
            self.throttle.record_failure("1.2.3.4")
        self.throttle.record_success("1.2.3.4")
        self.assertTrue(self.throttle.record_failure("1.2.3.4").locked_out)

    def test_stats(self):
        for _ in range(4):
            self.throttle.record_failure("1.2.3.4")
        self.throttle.record_failure("5.6.7.8")
        self.throttle.record_success("9.9.9.9")
        self.throttle.refuse()
        self.assertEqual(self.throttle.stats(), {
            "login_successes_total": 1, "login_failures_total": 5, "login_refused_throttled_total": 1,
            "login_lockouts_total": 1, "addresses_tracked": 2, "addresses_locked_out": 1,
        })

    def test_memory_bounded(self):
        throttle = LoginThrottle(self.clock, ThrottleSettings(max_tracked=3))
        for i in range(10):
            throttle.record_failure(f"10.0.0.{i}")
            self.clock.advance(1)
        self.assertEqual(throttle.stats()["addresses_tracked"], 3)

    def test_keys(self):
        self.assertEqual(throttle_key("192.0.2.1"), "192.0.2.1")
        self.assertEqual(throttle_key("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(throttle_key("2001:db8::1"), throttle_key("2001:db8::ffff:1"))
        self.assertNotEqual(throttle_key("2001:db8::1"), throttle_key("2001:db8:0:1::1"))
        self.assertEqual(throttle_key(None), "unknown")


class ThrottledPortalTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        path = make_users_file(self.mktemp(), {"alice": (PASSWORD, ["alice@corp.example"])})
        checker = UsersFileChecker(UsersStore(path), ImmediateReactor(), SynchronousThreadPool(), dummy_hash=cheap_hash("d").encode())
        self.throttle = LoginThrottle(self.clock, ThrottleSettings(max_failures=3, window=600, base_delay=2, max_delay=5))
        self.portal = ThrottledPortal(Portal(IdentityRealm(), [checker]), self.throttle, "submission")
        self.events = LogCapture.install(self)

    def login(self, password, mind="203.0.113.7", user="alice"):
        return self.portal.login(UsernamePassword(user.encode(), password.encode()), mind, IAuthenticatedIdentity)

    def log_text(self):
        return "\n".join(formatEvent(e) + repr(e) for e in self.events)

    def test_success_returns_identity_and_logs_without_password(self):
        iface, identity, logout = self.successResultOf(self.login(PASSWORD))
        self.assertIs(iface, IAuthenticatedIdentity)
        self.assertEqual(identity, Identity("alice", ("alice@corp.example",)))
        logout()
        text = self.log_text()
        self.assertIn("AUTH success", text)
        self.assertIn("alice", text)
        self.assertIn("203.0.113.7", text)
        self.assertNotIn(PASSWORD, text)

    def test_failures_are_delayed_more_each_time_then_throttled(self):
        d = self.login(WRONG)
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, UnauthorizedLogin)

        d = self.login(WRONG)
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, UnauthorizedLogin)

        # third failure reaches max_failures: refused at once as throttled (421 + disconnect)
        self.failureResultOf(self.login(WRONG), LoginThrottled)
        # and now even the right password is not checked from this address
        self.failureResultOf(self.login(PASSWORD), LoginThrottled)
        # other clients are unaffected
        self.successResultOf(self.login(PASSWORD, mind="198.51.100.1"))
        stats = self.throttle.stats()
        self.assertEqual(stats["login_failures_total"], 3)
        self.assertEqual(stats["login_refused_throttled_total"], 1)
        self.assertEqual(stats["addresses_locked_out"], 1)
        text = self.log_text()
        self.assertIn("AUTH failed", text)
        self.assertIn("too many failed logins", text)
        self.assertNotIn(WRONG, text)
        self.assertNotIn(PASSWORD, text)

    def test_client_address_from_address_object_session_or_callable(self):
        for expected in (UnauthorizedLogin, UnauthorizedLogin, LoginThrottled):
            d = self.login(WRONG, mind=IPv4Address("TCP", "192.0.2.9", 4000))
            self.clock.advance(10)
            self.failureResultOf(d, expected)
        self.failureResultOf(self.login(PASSWORD, mind=SessionView("l", "192.0.2.9", 1)), LoginThrottled)
        # a per-connection portal asks for the address at login time (after a PROXY header)
        peer = {"address": IPv4Address("TCP", "10.0.0.1", 1)}
        per_connection = self.portal.for_client(lambda: peer["address"])
        peer["address"] = IPv4Address("TCP", "192.0.2.9", 5)
        self.failureResultOf(per_connection.login(UsernamePassword(b"alice", PASSWORD.encode()), None, IAuthenticatedIdentity), LoginThrottled)

    def test_login_name_in_logs_is_sanitised(self):
        d = self.login(WRONG, user="evil\r\nFAKE LOG LINE")
        self.clock.advance(10)
        self.failureResultOf(d, UnauthorizedLogin)
        text = "\n".join(formatEvent(e) for e in self.events)
        self.assertNotIn("\r\nFAKE", text)
        self.assertIn("evil??FAKE LOG LINE", text)
