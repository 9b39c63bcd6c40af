"""
Configuration: defaults are safe, every bad value is one clear error naming its key, secrets
come from files or the environment without ever showing in a repr.
"""

from __future__ import annotations

import ipaddress
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ConfigError, load_config
from gateway.config.loader import build_config
from gateway.config.reader import parse_duration, parse_size
from gateway.config.secrets import Secret, secret_from_table
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import PolicyConfigError
from gateway.policy.rate_limit import build as build_rate_limit
from gateway.testing.policy import make_session, run_transaction


def build(data, overrides=None, environ=None):
    return build_config(data, overrides or {}, environ or {}, "/base")


class DefaultsTests(SynchronousTestCase):
    def test_no_file_gives_safe_loopback_listener(self):
        config = build({})
        [listener] = config.listeners
        self.assertEqual(listener.endpoint, "tcp:2525:interface=127.0.0.1")
        self.assertEqual(listener.auth, "none")
        self.assertEqual(
            listener.trusted_networks,
            (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        )
        self.assertEqual(config.deliverer, "capture")
        self.assertEqual(config.spool.directory, "/base/graphsmtp-data/spool")
        self.assertEqual(config.capture.outbox, "/base/graphsmtp-data/outbox")

    def test_configured_listener_is_closed_by_default(self):
        config = build({"listener": [{"name": "mx", "endpoint": "tcp:25"}]})
        self.assertEqual(config.listeners[0].trusted_networks, ())

    def test_overrides_beat_the_file(self):
        config = build(
            {"gateway": {"state_dir": "/srv/a"}, "listener": [{"name": "mx", "endpoint": "tcp:25"}]},
            {"listen": "tcp:2600:interface=127.0.0.1", "state_dir": "/srv/b"},
        )
        self.assertEqual([l.endpoint for l in config.listeners], ["tcp:2600:interface=127.0.0.1"])
        self.assertEqual(config.spool.directory, "/srv/b/spool")

    def test_listener_limits_inherit_global_limits(self):
        config = build({
            "limits": {"max_recipients": 50, "max_message_size": "10MiB"},
            "listener": [{"name": "a", "endpoint": "tcp:25", "limits": {"max_recipients": 5}}],
        })
        limits = config.listeners[0].limits
        self.assertEqual(limits.max_recipients, 5)
        self.assertEqual(limits.max_message_size, 10 * 1024 * 1024)

    def test_example_config_in_etc_loads(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load_config(os.path.join(here, "etc", "graphsmtp.toml"), environ={})
        self.assertTrue(config.listeners)


class ErrorTests(SynchronousTestCase):
    def assertConfigError(self, data, key, fragment, environ=None):
        e = self.assertRaises(ConfigError, build, data, None, environ)
        self.assertEqual(e.key, key)
        self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))
        return e

    def test_unknown_key_is_named(self):
        self.assertConfigError({"spool": {"directroy": "x"}}, "spool.directroy", "unknown setting")

    def test_bad_integer_is_named(self):
        self.assertConfigError(
            {"listener": [{"name": "sub", "endpoint": "tcp:587", "limits": {"max_recipients": 0}}]},
            "listener.sub.limits.max_recipients", "from 1 to",
        )

    def test_bad_network(self):
        self.assertConfigError(
            {"listener": [{"name": "sub", "endpoint": "tcp:587", "trusted_networks": ["10.0.0.0/33"]}]},
            "listener.sub.trusted_networks", "not an IPv4/IPv6",
        )

    def test_tls_needs_certificate(self):
        self.assertConfigError(
            {"listener": [{"name": "sub", "endpoint": "tcp:587", "tls": "starttls"}]},
            "listener.sub.tls_cert", "required",
        )

    def test_auth_required_without_tls_is_refused(self):
        self.assertConfigError(
            {"listener": [{"name": "sub", "endpoint": "tcp:587", "auth": "required"}]},
            "listener.sub.auth", "no TLS",
        )

    def test_duplicate_listener_names(self):
        self.assertConfigError(
            {"listener": [{"name": "a", "endpoint": "tcp:1"}, {"name": "a", "endpoint": "tcp:2"}]},
            "listener.a.name", "duplicate",
        )

    def test_graph_deliverer_without_credentials(self):
        self.assertConfigError({"delivery": {"deliverer": "graph"}}, "delivery.deliverer", "no [graph]")

    def test_bad_toml_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[gateway\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("not valid TOML", str(e))

    def test_missing_file(self):
        e = self.assertRaises(ConfigError, load_config, "/nonexistent/graphsmtp.toml")
        self.assertIn("does not exist", str(e))

    def test_bad_hostname(self):
        self.assertConfigError({"gateway": {"hostname": "bad host\r\nX: y"}}, "gateway.hostname", "not a valid host name")


class UnitParsingTests(SynchronousTestCase):
    def test_durations(self):
        self.assertEqual(parse_duration("5d", "k"), 432000.0)
        self.assertEqual(parse_duration("90s", "k"), 90.0)
        self.assertEqual(parse_duration(2.5, "k"), 2.5)
        self.assertRaises(ConfigError, parse_duration, "soon", "k")
        self.assertRaises(ConfigError, parse_duration, True, "k")

    def test_sizes(self):
        self.assertEqual(parse_size("25MiB", "k"), 25 * 1024 * 1024)
        self.assertEqual(parse_size("35MB", "k"), 35_000_000)
        self.assertEqual(parse_size(1024, "k"), 1024)
        self.assertRaises(ConfigError, parse_size, "big", "k")


class SecretTests(SynchronousTestCase):
    def test_repr_hides_value(self):
        secret = Secret("hunter2-very-secret")
        self.assertNotIn("hunter2", repr(secret))
        self.assertNotIn("hunter2", str(secret))
        self.assertNotIn("hunter2", repr({"s": secret}))
        self.assertEqual(secret.reveal(), "hunter2-very-secret")

    def test_from_file(self):
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"s3cret\n")
        os.close(fd)
        secret = secret_from_table({"client_secret_file": path}, "client_secret", "graph", {})
        self.assertEqual(secret.reveal(), "s3cret")

    def test_world_readable_file_refused_with_path(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret")
        os.chmod(path, 0o644)
        e = self.assertRaises(ConfigError, secret_from_table, {"client_secret_file": path}, "client_secret", "graph", {})
        self.assertIn(path, str(e))
        self.assertIn("readable by other users", str(e))
        self.assertNotIn("s3cret", str(e))

    def test_credentials_directory(self):
        directory = self.mktemp()
        os.mkdir(directory)
        fd = os.open(os.path.join(directory, "graph-secret"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"from-systemd")
        os.close(fd)
        secret = secret_from_table(
            {"client_secret_file": "graph-secret"}, "client_secret", "graph", {"CREDENTIALS_DIRECTORY": directory}
        )
        self.assertEqual(secret.reveal(), "from-systemd")

    def test_from_environment(self):
        secret = secret_from_table({"client_secret_env": "GS_SECRET"}, "client_secret", "graph", {"GS_SECRET": "e"})
        self.assertEqual(secret.reveal(), "e")
        e = self.assertRaises(ConfigError, secret_from_table, {"client_secret_env": "GS_SECRET"}, "client_secret", "graph", {})
        self.assertEqual(e.key, "graph.client_secret_env")

    def test_only_one_source(self):
        e = self.assertRaises(
            ConfigError, secret_from_table, {"client_secret": "a", "client_secret_env": "B"}, "client_secret", "graph", {}
        )
        self.assertIn("only one", str(e))


class ProxyProtocolTests(SynchronousTestCase):
    def test_flag_wraps_the_endpoint(self):
        [listener] = build({"listener": [{"name": "lb", "endpoint": "tcp:2525", "proxy_protocol": True}]}).listeners
        self.assertEqual(listener.endpoint, "haproxy:tcp:2525")
        self.assertTrue(listener.proxy_protocol)

    def test_prefix_sets_the_flag(self):
        [listener] = build({"listener": [{"name": "lb", "endpoint": "haproxy:tcp:2525"}]}).listeners
        self.assertTrue(listener.proxy_protocol)


class SecretPathTests(SynchronousTestCase):
    def write_secret(self, directory: str, name: str, data: bytes) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.close(fd)
        return path

    def test_relative_file_is_relative_to_the_config_file(self):
        config_dir = os.path.abspath(self.mktemp())
        self.write_secret(config_dir, "redis-password", b"pw-from-config-dir")
        resolve = lambda p: os.path.join(config_dir, p)  # noqa: E731 - what the loader passes
        secret = secret_from_table({"password_file": "redis-password"}, "password", "redis", {}, resolve)
        self.assertEqual(secret.reveal(), "pw-from-config-dir")

    def test_credentials_directory_wins_for_relative_names(self):
        config_dir = os.path.abspath(self.mktemp())
        creds = os.path.abspath(self.mktemp())
        self.write_secret(config_dir, "s", b"wrong")
        self.write_secret(creds, "s", b"right")
        secret = secret_from_table({"password_file": "s"}, "password", "redis",
                                   {"CREDENTIALS_DIRECTORY": creds}, lambda p: os.path.join(config_dir, p))
        self.assertEqual(secret.reveal(), "right")

    def test_non_utf8_file_error_does_not_quote_the_secret(self):
        path = self.write_secret(os.path.abspath(self.mktemp()), "s", b"\xffsecret\xfe")
        e = self.assertRaises(ConfigError, secret_from_table, {"password_file": path}, "password", "redis", {})
        self.assertIn("not UTF-8", str(e))
        self.assertNotIn("xff", str(e))
        self.assertNotIn("secret\\", str(e))


# configuration values TOML can express but that make no sense must be refused with one
# line naming the key: ``nan``/``inf`` durations and numbers (a rate-limit window of ``nan``
# silently disabled the limit; an infinite timeout reaches callLater and the poller).
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
