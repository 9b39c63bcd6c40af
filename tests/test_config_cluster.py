"""The ``[cluster]`` section: defaults, validation, and that it needs ``[redis]``."""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ConfigError
from gateway.config.loader import build_config


class ClusterConfigTests(SynchronousTestCase):
    def build(self, **sections):
        data = {"listener": [{"name": "x", "endpoint": "tcp:0"}], **sections}
        return build_config(data, {}, {}, os.path.abspath(self.mktemp()))

    def test_absent_means_each_gateway_paces_alone(self):
        self.assertIsNone(self.build().cluster)

    def test_defaults(self):
        cluster = self.build(redis={}, cluster={}).cluster
        self.assertEqual((cluster.name, cluster.node_id, cluster.expected_nodes, cluster.lease_ttl, cluster.retry,
                          cluster.rate_window), ("graphsmtp", socket.gethostname(), 1, 30.0, 5.0, 60.0))

    def test_values(self):
        cluster = self.build(redis={}, cluster={"name": "mail-gw", "node_id": "gw2", "expected_nodes": 3,
                                                "lease_ttl": "10s", "retry": "1s", "rate_window": "2s"}).cluster
        self.assertEqual((cluster.name, cluster.node_id, cluster.expected_nodes, cluster.lease_ttl, cluster.retry,
                          cluster.rate_window), ("mail-gw", "gw2", 3, 10.0, 1.0, 2.0))

    def test_needs_redis(self):
        e = self.assertRaises(ConfigError, self.build, cluster={})
        self.assertIn("[redis]", str(e))

    def test_refusals(self):
        for bad in ({"node_id": "gw 1"}, {"name": "a:b"}, {"expected_nodes": 0}, {"lease_ttl": "0.5s"},
                    {"retry": "0s"}, {"rate_window": "0s"}, {"unknown": 1}):
            self.assertRaises(ConfigError, self.build, redis={}, cluster=bad)


class SentinelConfigTests(SynchronousTestCase):
    def build(self, redis):
        return build_config({"listener": [{"name": "x", "endpoint": "tcp:0"}], "redis": redis}, {}, {},
                            os.path.abspath(self.mktemp()))

    def test_sentinels(self):
        redis = self.build({"sentinels": ["10.0.0.5:26379", "[::1]:26380"], "sentinel_master": "gw"}).redis
        self.assertEqual(redis.sentinels, (("10.0.0.5", 26379), ("::1", 26380)))
        self.assertEqual(redis.sentinel_master, "gw")

    def test_refusals(self):
        for bad in ({"sentinels": ["10.0.0.5"]}, {"sentinels": ["10.0.0.5:0"]},
                    {"sentinels": ["10.0.0.5:26379"], "host": "10.0.0.6"},
                    {"sentinels": ["10.0.0.5:26379"], "url": "redis://10.0.0.6"}):
            self.assertRaises(ConfigError, self.build, bad)
