"""
Review: configuration values TOML can express but that make no sense must be refused with one
line naming the key: ``nan``/``inf`` durations and numbers (a rate-limit window of ``nan``
silently disabled the limit; an infinite timeout reaches callLater and the poller).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import PolicyConfigError
from gateway.policy.rate_limit import build as build_rate_limit
from gateway.policy.testing import make_session, run_transaction

NAN, INF = float("nan"), float("inf")


class NonFiniteTests(SynchronousTestCase):
    def config(self, data):
        base = self.mktemp()
        return build_config(data, {}, {}, base)

    def test_durations_refuse_nan_and_inf(self):
        for value in (NAN, INF, -INF, "9" * 400 + "s"):
            for data, key in [
                ({"limits": {"idle_timeout": value}}, "limits.idle_timeout"),
                ({"queue": {"max_lifetime": value}}, "queue.max_lifetime"),
                ({"queue": {"attempt_timeout": value}}, "queue.attempt_timeout"),
            ]:
                e = self.assertRaises(ConfigError, self.config, data)
                self.assertEqual(e.key, key)

    def test_numbers_refuse_nan_and_inf(self):
        for value in (NAN, INF):
            e = self.assertRaises(ConfigError, self.config, {"queue": {"jitter": value}})
            self.assertEqual(e.key, "queue.jitter")

    def test_rate_limit_window_nan_is_refused_not_a_disabled_limit(self):
        context = PolicyContext(clock=Clock())
        for value in (NAN, INF):
            e = self.assertRaises(PolicyConfigError, build_rate_limit, {"key": "client-ip", "messages": 1, "per": value}, context)
            self.assertEqual(e.option, "per")

    def test_finite_values_still_work(self):
        config = self.config({"limits": {"idle_timeout": 30.5}, "queue": {"jitter": 0.1, "max_lifetime": "2d"}})
        self.assertEqual(config.listeners[0].limits.idle_timeout, 30.5)
        self.assertEqual(config.queue.max_lifetime, 2 * 86400.0)
        policy = build_rate_limit({"key": "client-ip", "messages": 1, "per": 60.0}, PolicyContext(clock=Clock()))
        chain = PolicyChain([policy])
        self.assertTrue(self.successResultOf(run_transaction(chain, make_session(), "a@x.example", ["b@x.example"])).allowed)
        self.assertFalse(self.successResultOf(run_transaction(chain, make_session(), "a@x.example", ["b@x.example"])).allowed)


class EndpointTests(SynchronousTestCase):
    """
    A listener or status endpoint Twisted cannot parse used to pass the configuration and then
    crash start-up (and ``graphsmtp-config check`` said OK for the status one) with a
    traceback instead of one line naming the key.
    """

    def config(self, data):
        return build_config(data, {}, {}, self.mktemp())

    def test_bad_listener_endpoint_names_the_key(self):
        for endpoint in ("tcp:notaport", "bogus:25", "tcp:25:interfac=127.0.0.1", "systemd:domain=INET"):
            e = self.assertRaises(ConfigError, self.config, {"listener": [{"name": "a", "endpoint": endpoint}]})
            self.assertEqual(e.key, "listener.a.endpoint", endpoint)

    def test_bad_status_endpoint_names_the_key(self):
        e = self.assertRaises(ConfigError, self.config, {"status": {"endpoint": "tcp:notaport"}})
        self.assertEqual(e.key, "status.endpoint")

    def test_good_endpoints_still_load(self):
        for endpoint in ("tcp:2525:interface=127.0.0.1", "tcp6:2525:interface=\\:\\:1", "haproxy:tcp:25",
                         "unix:/run/graphsmtp.sock", "systemd:domain=INET:index=0"):
            config = self.config({"listener": [{"name": "a", "endpoint": endpoint}], "status": {"endpoint": "tcp:0"}})
            self.assertEqual(config.listeners[0].endpoint, endpoint)


class RetryScheduleTests(SynchronousTestCase):
    """The last retry_schedule value repeats for days: 0 would retry a failing message in a hot loop."""

    def test_repeating_zero_delay_is_refused(self):
        for schedule, key in ([0], "queue.retry_schedule[0]"), (["1m", "0s"], "queue.retry_schedule[1]"):
            e = self.assertRaises(ConfigError, build_config, {"queue": {"retry_schedule": schedule}}, {}, {}, self.mktemp())
            self.assertEqual(e.key, key)

    def test_immediate_first_retry_then_backoff_is_fine(self):
        config = build_config({"queue": {"retry_schedule": [0, "5m"]}}, {}, {}, self.mktemp())
        self.assertEqual(config.queue.retry_schedule, (0.0, 300.0))


class HeaderSizeTests(SynchronousTestCase):
    """max_header_size = 0 (or a few bytes) made every message with headers refused."""

    def test_tiny_header_size_is_refused(self):
        for data, key in [({"limits": {"max_header_size": 0}}, "limits.max_header_size"),
                          ({"listener": [{"name": "a", "endpoint": "tcp:0", "limits": {"max_header_size": "100B"}}]},
                           "listener.a.limits.max_header_size")]:
            e = self.assertRaises(ConfigError, build_config, data, {}, {}, self.mktemp())
            self.assertEqual(e.key, key)

    def test_reasonable_header_size_loads(self):
        config = build_config({"limits": {"max_header_size": "64KiB"}}, {}, {}, self.mktemp())
        self.assertEqual(config.listeners[0].limits.max_header_size, 65536)
