"""The [auth] section: defaults, values, and start-up errors that name the key and the path."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.build import build_auth
from gateway.config.auth import AuthConfig
from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.config.model import ListenerConfig
from gateway.testing.logs import LogCapture
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.auth_helpers import (
    make_users_file,
    private_file,
)

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


class AuthSectionTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.users = make_users_file(os.path.join(self.dir, "users.jsonl"), {"a": ("pw", ["*"])})

    def load(self, auth, environ=None):
        return build_config({"auth": auth}, {}, environ or {}, self.dir).auth

    def assertConfigError(self, auth, key, *fragments, environ=None):
        e = self.assertRaises(ConfigError, self.load, auth, environ)
        self.assertEqual(e.key, key)
        for f in fragments:
            self.assertIn(f, str(e))
        return e

    def test_absent_section_is_defaults(self):
        config = build_config({}, {}, {}, self.dir).auth
        self.assertEqual(config, AuthConfig())
        self.assertFalse(config.has_checkers)

    def test_full_section(self):
        config = self.load({
            "users_file": "users.jsonl",
            "hash_threads": 3,
            "passthrough": {
                "enabled": True, "allowed_tenants": [TENANT.upper()], "delimiters": ["|"],
                "key_file": "pt.key", "store_directory": "creds", "allowed_senders": ["*@corp.example"],
                "login_host": "https://127.0.0.1:8443/",
            },
            "throttle": {"max_failures": 5, "window": "10m", "base_delay": "500ms", "max_delay": "4s"},
        })
        self.assertEqual(config.users_file, self.users)
        self.assertEqual(config.hash_threads, 3)
        self.assertEqual(config.passthrough.allowed_tenants, (TENANT,))
        self.assertEqual(config.passthrough.delimiters, ("|",))
        self.assertEqual(config.passthrough.key_file, os.path.join(self.dir, "pt.key"))
        self.assertEqual(config.store_directory("/state"), os.path.join(self.dir, "creds"))
        self.assertEqual(config.passthrough.login_host, "https://127.0.0.1:8443")
        self.assertEqual((config.throttle.max_failures, config.throttle.window, config.throttle.base_delay, config.throttle.max_delay), (5, 600, 0.5, 4))

    def test_defaults_under_state_dir(self):
        config = self.load({"passthrough": {"enabled": True, "allowed_tenants": ["*"]}})
        self.assertEqual(config.key_file("/state"), "/state/passthrough.key")
        self.assertEqual(config.store_directory("/state"), "/state/credentials")

    def test_key_file_from_credentials_directory(self):
        creds = os.path.join(self.dir, "creds")
        os.makedirs(creds)
        config = self.load({"passthrough": {"key_file": "pt.key"}}, environ={"CREDENTIALS_DIRECTORY": creds})
        self.assertEqual(config.passthrough.key_file, os.path.join(creds, "pt.key"))

    def test_world_readable_key_file_refused_with_path(self):
        key = private_file(os.path.join(self.dir, "pt.key"), b"x", 0o644)
        self.assertConfigError({"passthrough": {"key_file": "pt.key"}}, "auth.passthrough.key_file", key, "chmod 600")

    def test_users_file_problems(self):
        self.assertConfigError({"users_file": "missing.jsonl"}, "auth.users_file", os.path.join(self.dir, "missing.jsonl"))
        os.chmod(self.users, 0o644)
        self.assertConfigError({"users_file": "users.jsonl"}, "auth.users_file", self.users, "chmod 600")
        os.chmod(self.users, 0o600)
        private_file(self.users, b'{"login": "a", "hash": "secret123", "allowed_senders": ["*"]}\n')
        e = self.assertConfigError({"users_file": "users.jsonl"}, "auth.users_file", "line 1", "plaintext")
        self.assertNotIn("secret123", str(e))

    def test_passthrough_needs_tenants(self):
        self.assertConfigError({"passthrough": {"enabled": True}}, "auth.passthrough.allowed_tenants", "required")
        self.assertConfigError({"passthrough": {"allowed_tenants": ["corp.example"]}}, "auth.passthrough.allowed_tenants", "GUID")

    def test_other_bad_values(self):
        self.assertConfigError({"passthrough": {"delimiters": ["/"]}}, "auth.passthrough.delimiters")
        self.assertConfigError({"passthrough": {"login_host": "http://x"}}, "auth.passthrough.login_host", "https")
        self.assertConfigError({"passthrough": {"allowed_senders": ["nope"]}}, "auth.passthrough.allowed_senders")
        self.assertConfigError({"throttle": {"max_failures": 0}}, "auth.throttle.max_failures")
        self.assertConfigError({"throttle": {"base_delay": "10s", "max_delay": "1s"}}, "auth.throttle.max_delay")
        self.assertConfigError({"user_file": "x"}, "auth.user_file", "unknown")


class BuildAuthTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def test_listener_requiring_auth_without_checkers_is_config_error(self):
        auth = build_auth(AuthConfig(), self.dir, reactor=ImmediateReactor(), threadpool=SynchronousThreadPool())
        e = self.assertRaises(ConfigError, auth.portal_for, ListenerConfig(name="sub", endpoint="tcp:0", auth="required"))
        self.assertEqual(e.key, "listener.sub.auth")
        self.assertIsNone(auth.portal_for(ListenerConfig(name="plain", endpoint="tcp:0")))

    def test_listeners_share_one_throttle(self):
        users = make_users_file(os.path.join(self.dir, "u.jsonl"), {"a": ("pw", ["*"])})
        auth = build_auth(AuthConfig(users_file=users), self.dir, reactor=ImmediateReactor(), threadpool=SynchronousThreadPool())
        first = auth.portal_for(ListenerConfig(name="a", endpoint="tcp:0", auth="optional"))
        second = auth.portal_for(ListenerConfig(name="b", endpoint="tcp:0", auth="required"))
        self.assertIs(first.throttle, second.throttle)
        self.assertEqual(auth.services, [])

    def test_plaintext_auth_listener_warned_at_start(self):
        from twisted.logger import LogLevel, formatEvent
        events = LogCapture.install(self)
        users = make_users_file(os.path.join(self.dir, "u.jsonl"), {"a": ("pw", ["*"])})
        auth = build_auth(AuthConfig(users_file=users), self.dir, reactor=ImmediateReactor(), threadpool=SynchronousThreadPool())
        auth.portal_for(ListenerConfig(name="local-apps", endpoint="tcp:0", auth="optional", allow_plaintext_auth=True))
        auth.portal_for(ListenerConfig(name="secure", endpoint="tcp:0", auth="optional", tls="starttls", tls_cert="x"))
        warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("local-apps", warnings[0])

    def test_own_threadpool_is_a_service(self):
        auth = build_auth(AuthConfig(), self.dir, reactor=ImmediateReactor())
        self.assertEqual(len(auth.services), 1)


class SecureExampleTests(SynchronousTestCase):
    """etc/graphsmtp-secure-example.toml is a valid configuration with the documented layout."""

    def test_example_parses(self):
        import tomllib
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "etc", "graphsmtp-secure-example.toml"), "rb") as f:
            data = tomllib.load(f)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        data["auth"]["users_file"] = make_users_file(os.path.join(directory, "users.jsonl"), {"crm": ("pw", ["crm@corp.example"])})
        config = build_config(data, {}, {}, directory)
        by_name = {l.name: l for l in config.listeners}
        self.assertEqual((by_name["submission"].tls, by_name["submission"].auth), ("starttls", "required"))
        self.assertEqual((by_name["submissions"].tls, by_name["submissions"].auth), ("implicit", "required"))
        self.assertEqual((by_name["devices"].auth, by_name["devices"].tls_min_version), ("none", "1.2"))
        self.assertTrue(by_name["devices"].trusted_networks)
        self.assertEqual(config.auth.throttle.max_failures, 10)
        self.assertFalse(config.auth.passthrough.enabled)
