"""The [redis] and [[observer]] sections: every form they accept, every error naming its key, no password leaks."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.config.policy import RedisConfig

PASSWORD = "pw-9f8e7d6c"


def redis(section, environ=None, base="/etc/graphsmtp"):
    return build_config({"redis": section}, {}, environ or {}, base).redis


class RedisSectionTests(SynchronousTestCase):
    def test_absent_section_means_no_redis(self):
        self.assertIsNone(build_config({}, {}, {}, "/").redis)

    def test_defaults(self):
        self.assertEqual(redis({}), RedisConfig())

    def test_host_port_db_and_timeouts(self):
        config = redis({"host": "10.0.0.5", "port": 6380, "db": 2, "connect_timeout": "500ms", "reply_timeout": 3, "key_prefix": "gw1"})
        self.assertEqual(
            (config.host, config.port, config.db, config.connect_timeout, config.reply_timeout, config.key_prefix),
            ("10.0.0.5", 6380, 2, 0.5, 3.0, "gw1"),
        )
        self.assertEqual(config.describe(), "redis 10.0.0.5:6380 db 2")

    def test_relative_unix_socket_is_relative_to_the_configuration(self):
        self.assertEqual(redis({"unix_socket": "run/redis.sock"}).unix_socket, "/etc/graphsmtp/run/redis.sock")

    def test_urls(self):
        config = redis({"url": f"redis://worker:{PASSWORD}@cache.corp.example:6390/4"})
        self.assertEqual((config.host, config.port, config.db, config.username), ("cache.corp.example", 6390, 4, "worker"))
        self.assertEqual(config.password.reveal(), PASSWORD)
        self.assertNotIn(PASSWORD, repr(config))
        unix = redis({"url": "unix:///run/redis/redis.sock?db=1"})
        self.assertEqual((unix.unix_socket, unix.db), ("/run/redis/redis.sock", 1))
        self.assertEqual(redis({"url": "redis://localhost"}).port, 6379)

    def test_password_from_environment(self):
        config = redis({"password_env": "REDIS_PASSWORD"}, {"REDIS_PASSWORD": PASSWORD})
        self.assertEqual(config.password.reveal(), PASSWORD)
        self.assertNotIn(PASSWORD, repr(config))

    def test_errors_name_the_key_and_never_echo_the_password(self):
        for section, key in [
            ({"url": "redis://h", "host": "x"}, "redis.host"),
            ({"url": f"rediss://:{PASSWORD}@h"}, "redis.url"),
            ({"url": f"http://:{PASSWORD}@h"}, "redis.url"),
            ({"url": "redis://h/zero"}, "redis.url"),
            ({"url": f"redis://:{PASSWORD}@h", "password": "other"}, "redis.password"),
            ({"port": 70000}, "redis.port"),
            ({"reply_timeout": 0}, "redis.reply_timeout"),
            ({"key_prefix": "has space"}, "redis.key_prefix"),
            ({"password": "a", "password_env": "B"}, "redis.password"),
            ({"hostname": "typo"}, "redis.hostname"),
        ]:
            e = self.assertRaises(ConfigError, redis, section)
            self.assertEqual(e.key, key, (section, str(e)))
            self.assertNotIn(PASSWORD, str(e))


class ObserverSectionTests(SynchronousTestCase):
    def test_entries_keep_order_options_and_base_directory(self):
        refs = build_config({"observer": [
            {"use": "json-log", "path": "a.jsonl"},
            {"use": "webhook", "url": "https://x.example/hook"},
        ]}, {}, {}, "/etc/graphsmtp").observers
        self.assertEqual([(r.use, dict(r.options), r.base_dir, r.key) for r in refs], [
            ("json-log", {"path": "a.jsonl"}, os.path.normpath("/etc/graphsmtp"), "observer[0]"),
            ("webhook", {"url": "https://x.example/hook"}, os.path.normpath("/etc/graphsmtp"), "observer[1]"),
        ])
