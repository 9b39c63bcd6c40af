"""
rate-limit on Redis: a real redis-server (unix socket in a temporary directory, no persistence)
shared by two independent connections, as two gateways behind a load balancer would share it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.config.policy import RedisConfig
from gateway.config.secrets import Secret
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.rate_backends import BucketRequest, RedisBuckets
from gateway.policy.rate_limit import build
from gateway.policy.redis_connection import RedisConnection, redis_service
from gateway.testing.logs import LogCapture
from gateway.testing.policy import make_session, run_transaction, start_redis_server
from gateway.testing.ports import ports_for
from tests.tools import require_tool

PASSWORD = "s3cret-redis-pass"


class RedisTestBase(TestCase):
    server_args: tuple = ()
    tcp = False

    @inlineCallbacks
    def setUp(self):
        require_tool(self, "redis-server", "redis-server")
        self.directory = tempfile.mkdtemp(prefix="gsr", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.port = ports_for(self).port() if self.tcp else 0  # claimed until the test ends
        self.server = yield start_redis_server(reactor, self.directory, self.port, self.server_args)
        self.addCleanup(self.server.stop)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def connect(self, **overrides) -> RedisConnection:
        values = dict(unix_socket=self.server.socket_path, connect_timeout=2.0, reply_timeout=2.0, key_prefix="test")
        values.update(overrides)
        connection = RedisConnection(RedisConfig(**values), reactor)
        connection.startService()
        self.addCleanup(connection.stopService)
        return connection


class RedisBucketTests(RedisTestBase):
    @inlineCallbacks
    def test_two_gateways_share_a_budget_atomically(self):
        """Ten simultaneous takes from two connections against a budget of five: exactly five win."""
        first = RedisBuckets(self.connect(), self.clock, "test")
        second = RedisBuckets(self.connect(), self.clock, "test")
        request = BucketRequest("{shared}:messages", capacity=5, window=3600, cost=1)
        decisions = yield gatherResults([(first if i % 2 else second).take([request]) for i in range(10)])
        self.assertEqual(sum(d.allowed for d in decisions), 5)
        refused = [d for d in decisions if not d.allowed]
        self.assertAlmostEqual(refused[0].retry_after, 720.0, places=3)

    @inlineCallbacks
    def test_window_refills_by_the_injected_clock(self):
        buckets = RedisBuckets(self.connect(), self.clock, "test")
        request = BucketRequest("{k}:m", capacity=2, window=60, cost=1)
        self.assertTrue((yield buckets.take([request])).allowed)
        self.assertTrue((yield buckets.take([request])).allowed)
        self.assertFalse((yield buckets.take([request])).allowed)
        self.clock.advance(29)
        self.assertFalse((yield buckets.take([request])).allowed)
        self.clock.advance(1)
        self.assertTrue((yield buckets.take([request])).allowed)

    @inlineCallbacks
    def test_all_or_nothing_and_keys_expire(self):
        connection = self.connect()
        buckets = RedisBuckets(connection, self.clock, "test")
        small = BucketRequest("{m}:messages", capacity=1, window=60, cost=1)
        big = BucketRequest("{m}:recipients", capacity=10, window=60, cost=10)
        self.assertTrue((yield buckets.take([small])).allowed)
        self.assertFalse((yield buckets.take([small, big])).allowed)
        exists = yield connection.call(lambda r: r.exists("test:rl:{m}:recipients"))
        self.assertFalse(exists, "a refused take must not write any bucket")
        ttl = yield connection.call(lambda r: r.execute_command("PTTL", "test:rl:{m}:messages"))
        self.assertTrue(0 < ttl <= 61_000, ttl)


class RedisPolicyTests(RedisTestBase):
    def gateway(self, connection, listener="submission"):
        """One gateway's chain: the same configuration, its own connection."""
        context = PolicyContext(clock=self.clock, listener=listener, redis=connection, key=f"listener.{listener}.policies[0]")
        return PolicyChain([build({"key": "login", "messages": 3, "per": "1h", "backend": "redis"}, context)])

    @inlineCallbacks
    def test_limit_is_shared_by_two_gateway_instances(self):
        one, two = self.gateway(self.connect()), self.gateway(self.connect())
        session = make_session(login="printer@corp.example")
        results = []
        for chain in (one, two, one, two):
            results.append((yield run_transaction(chain, session, "scanner@corp.example", ["a@corp.example"])))
        self.assertEqual([r.allowed for r in results], [True, True, True, False])
        verdict = results[-1].result.verdict
        self.assertEqual((verdict.code, verdict.status), (451, "4.7.1"))
        self.assertIn("try again in 1200 seconds", verdict.text)
        # Other logins are unaffected.
        other = yield run_transaction(two, make_session(login="alice@corp.example"), "alice@corp.example", ["a@corp.example"])
        self.assertTrue(other.allowed)
        self.clock.advance(1200)
        again = yield run_transaction(one, session, "scanner@corp.example", ["a@corp.example"])
        self.assertTrue(again.allowed)

    @inlineCallbacks
    def test_unreachable_redis_is_a_temporary_failure(self):
        connection = self.connect(unix_socket=os.path.join(self.directory, "nothing-here.sock"), connect_timeout=0.2, reply_timeout=0.2)
        chain = self.gateway(connection)
        result = yield run_transaction(chain, make_session(login="p@corp.example"), "p@corp.example", ["a@corp.example"])
        self.assertEqual(result.step, "mail")
        self.assertEqual((result.result.verdict.code, result.result.verdict.status), (451, "4.3.0"))
        self.flushLoggedErrors()


class RedisTcpPasswordTests(RedisTestBase):
    tcp = True
    server_args = ("--requirepass", PASSWORD)

    @inlineCallbacks
    def test_tcp_connection_with_password_and_no_password_in_logs(self):
        events = LogCapture.install(self)
        connection = self.connect(unix_socket=None, host="127.0.0.1", port=self.port, password=Secret(PASSWORD))
        buckets = RedisBuckets(connection, self.clock, "test")
        self.assertTrue((yield buckets.take([BucketRequest("{t}:m", 1, 60, 1)])).allowed)
        self.assertNotIn(PASSWORD, repr(connection))
        self.assertNotIn(PASSWORD, repr(connection.config))
        self.assertFalse([e for e in events if PASSWORD in repr(e)])

    @inlineCallbacks
    def test_redis_service_from_gateway_config(self):
        from gateway.config.loader import build_config
        config = build_config(
            {"redis": {"url": f"redis://:{PASSWORD}@127.0.0.1:{self.port}/3", "reply_timeout": "1s"}},
            {}, {}, self.directory,
        )
        service = redis_service(config.redis, reactor)
        self.assertEqual((service.config.db, service.config.reply_timeout), (3, 1.0))
        service.startService()
        self.addCleanup(service.stopService)
        reply = yield service.call(lambda r: r.ping())
        self.assertEqual(reply, "PONG")
        self.assertIsNone(redis_service(build_config({}, {}, {}, self.directory).redis, reactor))


class RedisLifecycleTests(RedisTestBase):
    @inlineCallbacks
    def test_stopped_connection_refuses_instead_of_reconnecting(self):
        connection = self.connect()
        self.assertEqual((yield connection.call(lambda r: r.ping())), "PONG")
        yield connection.stopService()
        failure = yield self.assertFailure(connection.call(lambda r: r.ping()), Exception)
        self.assertIn("closed", str(failure))
        self.assertIsNone(connection._factory)
