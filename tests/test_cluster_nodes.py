"""
Several gateways, one tenant (issue 14): three ``twistd graphsmtp`` processes behind a real
HAProxy (the shipped etc/haproxy/graphsmtp.cfg), one redis-server, the fake Graph counting per
mailbox the requests in flight and per sliding window.

The limits are scaled so the suite stays fast on a small machine: ``mailbox_rate`` messages
per ``cluster.rate_window`` = 2 s instead of a minute.  The full-size run (1,500 messages, 3
mailboxes) is ``bench/bench_cluster.py``.
"""

from __future__ import annotations

import json
import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.cli import queue as queue_cli
from gateway.testing.fake_graph import Fault
from tests.cluster_rig import ClusterRig
from tests.tools import require_tool


class ThreeNodeTestBase(TestCase):
    timeout = 240

    def logged(self, rig, node, pattern: bytes, timeout: float = 60.0, after: int = 0):
        """
        Wait for ``pattern`` in ``node``'s log (from offset ``after`` on: a line of an earlier
        event must not count); on timeout fail with every node's log tail.
        """
        def missing(failure):
            logs = "\n".join(f"--- {n.name}\n{n.log[-2500:]}" for n in rig.nodes)
            raise AssertionError(f"{node.name} never logged {pattern!r}\n{logs}")

        return node.daemon.wait_for(pattern, after).addTimeout(timeout, reactor).addErrback(missing)

    def setUp(self):
        require_tool(self, "redis-server", "redis-server")
        require_tool(self, "haproxy", "haproxy")
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    @inlineCallbacks
    def healthz(self, node):
        response = yield self.http.get(f"http://127.0.0.1:{node.status_port}/healthz", timeout=10)
        body = yield response.content()
        return response.code, json.loads(body)

    @inlineCallbacks
    def leases_of(self, rig, node_name):
        """Expiry times of ``node_name``'s leases in Redis (read with a connection of our own)."""
        from gateway.config.policy import RedisConfig
        from gateway.policy.redis_connection import RedisConnection

        connection = RedisConnection(RedisConfig(unix_socket=rig.redis_socket), reactor)
        connection.startService()
        self.addCleanup(connection.stopService)
        keys = yield connection.call(lambda r: r.keys("graphsmtp:cluster:test:mb:*:leases"))
        expiries = []
        for key in keys:
            members = yield connection.call(lambda r, k=key: r.zrange(k, 0, -1, withscores=True))
            expiries += [float(score) for member, score in members if str(member).startswith(node_name + ":")]
        return expiries

    def assert_limits(self, rig):
        for mailbox in rig.mailboxes():
            self.assertGreater(rig.max_in_flight(mailbox), 0, mailbox)
            self.assertLessEqual(rig.max_in_flight(mailbox), rig.concurrency,
                                 f"{mailbox}: more requests in flight than mailbox_concurrency")
            self.assertLessEqual(rig.busiest_window(mailbox), rig.rate,
                                 f"{mailbox}: more than mailbox_rate requests in one {rig.window}s window")

    def assert_exactly_once(self, rig, numbers):
        twice = {n: by for n, by in rig.delivered.items() if len(by) > 1}
        self.assertEqual(twice, {}, "delivered more than once")
        self.assertEqual(set(rig.delivered), set(numbers))


class SharedLimitsTests(ThreeNodeTestBase):
    @inlineCallbacks
    def test_three_nodes_share_each_mailboxs_limits_and_survive_losing_redis(self):
        rig = ClusterRig(self, nodes=3, concurrency=3, rate=30, window=2.0, lease_ttl=3.0, latency=0.05)
        yield rig.start()
        accepted, refused = yield rig.send(0, 150)
        self.assertEqual(refused, [])
        self.assertEqual(len(accepted), 150)
        # Redis goes away while the first batch is being delivered: every node says so once,
        # nobody answers 5xx, mail is still accepted, and deliveries go on with each node's
        # share of the limits (here 1 of 3 requests in flight, 10 of 30 per window).
        yield rig.delivered_count(20)
        yield rig.stop_redis()
        yield gatherResults([self.logged(rig, node, rb"cluster state degraded") for node in rig.nodes])
        for node in rig.nodes:
            code, state = yield self.healthz(node)
            self.assertEqual((code, state["cluster"]["state"]), (200, "degraded"),
                             "losing Redis shows on /healthz but never makes it 503")
        metrics = yield self.http.get(f"http://127.0.0.1:{rig.nodes[0].status_port}/metrics", timeout=10)
        text = (yield metrics.content()).decode()
        self.assertIn('graphsmtp_cluster_state{node="gw1",state="degraded"} 1.0', text)
        more, refused = yield rig.send(150, 30)
        self.assertEqual(refused, [], "no 5xx (nor 4xx) while Redis is away")
        self.assertEqual(len(more), 30)
        alone = len(rig.delivered)
        yield rig.delivered_count(alone + 15)  # deliveries go on without Redis
        # Redis is back (empty: it kept nothing): the nodes rejoin without a restart.
        before = [len(node.daemon.output) for node in rig.nodes]
        yield rig.start_redis()
        yield gatherResults([self.logged(rig, node, rb"cluster state ok", after=at)
                             for node, at in zip(rig.nodes, before, strict=True)])
        yield rig.delivered_all(accepted + more)
        self.assert_limits(rig)
        self.assert_exactly_once(rig, accepted + more)
        for node in rig.nodes:
            self.assertEqual(node.log.count("cluster state degraded"), 1, "one line per outage, not per message")
            self.assertEqual(node.log.count("cluster state ok"), 1, "one line per rejoin")
            self.assertNotIn("shares mailbox limits again in", node.log,
                             "no false 'Redis lost its state' (epoch or server): a new cluster and a rejoin lose nothing")
            self.assertTrue(any(by == [node.name] for by in rig.delivered.values()), f"HAProxy sent {node.name} nothing")
            code, state = yield self.healthz(node)
            self.assertEqual((code, state["cluster"]["state"]), (200, "ok"))


class NodeLossTests(ThreeNodeTestBase):
    @inlineCallbacks
    def test_a_killed_node_frees_its_slots_and_delivers_after_restart(self):
        rig = ClusterRig(self, nodes=3, concurrency=3, rate=30, window=2.0, lease_ttl=3.0, latency=0.3)
        yield rig.start()
        accepted, refused = yield rig.send(0, 90)
        self.assertEqual((refused, len(accepted)), ([], 90))
        victim = rig.nodes[1]
        # SIGKILL gw2 mid-run, while requests are in flight (the fake answers after 0.3 s).
        yield rig.delivered_count(10)
        yield victim.kill()
        killed_at = reactor.seconds()
        # Nobody renews gw2's leases any more: each expires (and its slot is free again for the
        # others) at most lease_ttl after the kill.
        expiries = yield self.leases_of(rig, "gw2")
        self.assertTrue(all(at <= killed_at + rig.lease_ttl for at in expiries), (killed_at, expiries))
        # The two others keep delivering.
        at_kill = len(rig.delivered)
        yield rig.delivered_count(at_kill + 20)
        # Restart gw2: everything it had acknowledged is delivered.
        yield victim.start()
        yield rig.delivered_all(accepted)
        self.assertEqual(set(rig.delivered), set(accepted))
        duplicates = {n: by for n, by in rig.delivered.items() if len(by) > 1}
        self.assertLessEqual(len(duplicates), rig.concurrency * 3,
                             "only what was in flight on the killed node may be sent twice")
        for _n, by in duplicates.items():
            self.assertEqual(set(by), {"gw2"}, "a duplicate can only come from the killed node's retry")
        self.assert_limits(rig)

    @inlineCallbacks
    def test_a_node_gone_for_good_is_adopted_by_another(self):
        rig = ClusterRig(self, nodes=3, concurrency=3, rate=30, window=2.0, lease_ttl=3.0, latency=0.3)
        yield rig.start()
        accepted, refused = yield rig.send(0, 60)
        self.assertEqual((refused, len(accepted)), ([], 60))
        yield rig.delivered_count(5)
        dead, heir = rig.nodes[1], rig.nodes[0]
        yield dead.kill()
        # gw2's disk is mounted on gw1's machine; gw1 keeps running and adopts the spool.
        lines = []
        status = yield deferToThread(queue_cli.main, [
            "--spool", os.path.join(heir.directory, "state", "spool"), "--wait", "0",
            "adopt", os.path.join(dead.directory, "state", "spool")], {}, lines.append)
        self.assertEqual(status, 0, lines)
        yield rig.delivered_all(accepted)
        duplicates = {n: by for n, by in rig.delivered.items() if len(by) > 1}
        self.assertLessEqual(len(duplicates), rig.concurrency * 3,
                             "only what was in flight on the dead node may be sent twice")
        self.assertTrue(any("gw2" in by for by in rig.delivered.values()), "gw2 had accepted some of the mail")
        self.assert_limits(rig)

    @inlineCallbacks
    def test_a_credential_failure_seen_by_one_node_pauses_the_tenant_on_all(self):
        rig = ClusterRig(self, nodes=3, concurrency=3, rate=30, window=2.0, lease_ttl=3.0, latency=0.02,
                         tenant_backoff=8.0)
        yield rig.start()
        # Graph refuses the app's tokens (401 even for a fresh one): the one node that gets the
        # next message sees it and pauses the tenant.
        rig.fake.clear_faults()
        rig.fake.inject(Fault.status_code(401, "InvalidAuthenticationToken", "Access token validation failure"),
                        operation="sendMail", times=None)
        first, _ = yield rig.send(0, 1, connections=1)
        self.assertEqual(first, [0])
        seen_by = yield _first_of([self.logged(rig, node, rb"GRAPH CONFIGURATION ERROR").addCallback(
            lambda _, n=node: n) for node in rig.nodes])
        refused_at = max(r.at for r in rig.fake.requests if r.status == 401)
        # Graph works again at once; only the shared pause may hold the other nodes back.
        rig.fake.clear_faults()
        others = [node for node in rig.nodes if node is not seen_by]
        yield gatherResults([self.logged(rig, node, rb"cluster: tenant \S+ paused on every node") for node in others])
        for node in rig.nodes:
            code, state = yield self.healthz(node)
            [tenant] = state["delivery"]["tenants"]
            self.assertEqual(tenant["state"], "needs-admin", f"{node.name}: {state}")
        more, _ = yield rig.send(100, 30, connections=3)
        self.assertEqual(len(more), 30)
        yield rig.delivered_all(first + more)
        sends = [r.at for r in rig.fake.requests if r.operation == "sendMail" and r.status == 202]
        self.assertGreaterEqual(min(sends), refused_at + rig.tenant_backoff - 0.5,
                                "no node sent for the tenant while it was paused")


def _first_of(waits):
    """The result of whichever of ``waits`` fires first."""
    from twisted.internet.defer import DeferredList

    return DeferredList(waits, fireOnOneCallback=True, consumeErrors=True).addCallback(lambda r: r[0])
