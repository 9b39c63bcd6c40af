"""
A node of a cluster finds Redis again within ``[cluster] retry`` of it coming back: the
rejoin wait of every other node (L{gateway.cluster.admission}) relies on that bound, which
txredisapi's own backoff (growing to 10 s, with random jitter) does not give.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config.loader import build_config
from gateway.config.policy import RedisConfig
from gateway.config.secrets import Secret
from gateway.policy.redis_connection import RedisConnection
from gateway.service import build_components
from gateway.testing.logs import LogCapture
from gateway.testing.ports import ports_for


class ReconnectScheduleTests(SynchronousTestCase):
    def factory_of(self, **options):
        connection = RedisConnection(RedisConfig(unix_socket="/nonexistent/redis.sock"), MemoryReactorClock(),
                                     **options)
        connection.startService()
        return connection._factory

    def test_reconnections_come_within_the_bound(self):
        factory = self.factory_of(reconnect_within=0.5)
        self.assertLessEqual(max(factory.retryDelay(attempt) for attempt in range(1, 60)), 0.5)
        self.assertGreater(factory.retryDelay(1), 0)

    def test_without_a_bound_txredisapi_backs_off_further(self):
        """Why the bound is needed: the default schedule waits up to 10 s (and more, by jitter)."""
        factory = self.factory_of()
        self.assertGreater(max(factory.retryDelay(attempt) for attempt in range(1, 60)), 5.0)


class StartAgainTests(SynchronousTestCase):
    """A connection txredisapi gave up on is started again (the live case: test_cluster_rejoin_faults)."""

    def test_starting_again_is_said_without_the_password_at_most_once_per_bound(self):
        events = LogCapture.install(self)
        clock = MemoryReactorClock()
        connection = RedisConnection(RedisConfig(unix_socket="/nonexistent/redis.sock", password=Secret("s3cr3t-pw")),
                                     clock, reconnect_within=1.0)
        connection.startService()
        self.addCleanup(connection.stopService)
        given_up = connection._factory
        given_up.stopTrying()  # what txredisapi does when AUTH fails on a new connection
        connection._handler()
        self.assertIsNot(connection._factory, given_up)
        again = connection._factory
        again.stopTrying()
        connection._handler()
        self.assertIs(connection._factory, again, "not again within reconnect_within")
        said = [formatEvent(e) for e in events if "stopped retrying" in str(e.get("log_format"))]
        self.assertEqual(len(said), 1)
        self.assertFalse(any("s3cr3t-pw" in formatEvent(e) for e in events))


class SentinelScheduleTests(TestCase):
    """With Sentinel, txredisapi builds the factories itself: the bound must reach each of them."""

    def cancel_discovery_timers(self):
        """txredisapi leaves a master discovery's timeout armed when its connections close."""
        for call in reactor.getDelayedCalls():
            if getattr(call.func, "__qualname__", "").startswith("Sentinel.discover_master"):
                call.cancel()

    def test_every_connection_through_sentinel_keeps_the_bound(self):
        ports = ports_for(self)
        config = RedisConfig(sentinels=(("127.0.0.1", ports.port()), ("127.0.0.1", ports.port())),
                             sentinel_master="gw", connect_timeout=1.5, reply_timeout=1.0)
        connection = RedisConnection(config, reactor, reconnect_within=0.5)
        connection.startService()
        self.addCleanup(self.cancel_discovery_timers)
        self.addCleanup(connection.stopService)
        master, sentinel = connection._factory, connection._sentinel
        self.assertLessEqual(max(master.retryDelay(attempt) for attempt in range(1, 60)), 0.5)
        for handler in sentinel.sentinels:
            self.assertLessEqual(max(handler._factory.retryDelay(attempt) for attempt in range(1, 60)), 0.5)
        # What the rejoin wait counts for a connection attempt: discovery, then the master.
        self.assertEqual((sentinel.discovery_timeout, master.maxDelay), (1.5, 1.5))


class ClusterWiringTests(SynchronousTestCase):
    def components(self, **sections):
        data = {"listener": [{"name": "x", "endpoint": "tcp:0"}], "redis": {"unix_socket": "/nonexistent/r.sock"},
                **sections}
        config = build_config(data, {}, {}, os.path.abspath(self.mktemp()))
        return build_components(config, MemoryReactorClock(), listen=False)

    def test_a_cluster_node_reconnects_every_retry(self):
        self.assertEqual(self.components(cluster={"retry": "0.5s"}).redis.reconnect_within, 0.5)

    def test_redis_without_a_cluster_keeps_txredisapis_backoff(self):
        self.assertIsNone(self.components().redis.reconnect_within)
