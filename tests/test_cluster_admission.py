"""
Cluster-wide mailbox admission (gateway.cluster.admission + its Lua scripts) against a real
redis-server: two L{ClusterAdmission} objects on two connections are two gateways.  Time is a
L{Clock} handed to both (the scripts take the caller's time), so TTLs and windows are exact.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from gateway.cluster.admission import DEGRADED, OK, ClusterAdmission, ClusterSlot, Later
from gateway.config.cluster import ClusterConfig
from gateway.testing.logs import LogCapture
from gateway.testing.policy import start_redis_server
from tests.test_policy_rate_redis import RedisTestBase

TENANT = ("https://login.example", "tenant-1", "client-1")
MAILBOX = (TENANT, "printer@example.com")
OTHER = (TENANT, "scanner@example.com")


class AdmissionTestBase(RedisTestBase):
    def node(self, name: str, **limits) -> ClusterAdmission:
        cluster = ClusterConfig(name="c1", node_id=name, expected_nodes=limits.pop("nodes", 2),
                                lease_ttl=limits.pop("lease_ttl", 10.0), retry=1.0,
                                rate_window=limits.pop("window", 60.0))
        values = dict(concurrency=2, rate=600.0, burst=1, max_hold=0.0)
        values.update(limits)
        return ClusterAdmission(self.connect(), cluster, self.clock, **values)

    @inlineCallbacks
    def start_redis_again(self):
        """The same socket, an empty (or snapshot-loaded) Redis."""
        self.server = yield start_redis_server(reactor, self.directory, 0, ())
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def reconnected(self, node):
        """Wait (real time) until ``node``'s own connection works again, without telling its admission."""
        for _ in range(20):
            try:
                yield node.redis.call(lambda r: r.ping())
                return
            except Exception:  # noqa: BLE001 - still reconnecting
                continue
        self.fail(f"{node.cluster.node_id}: txredisapi never reconnected")

    @inlineCallbacks
    def find_redis(self, node):
        for _ in range(10):  # each probe waits (up to the timeouts) for txredisapi to reconnect
            yield node._tick()
            if node.state != DEGRADED:
                return
        self.fail(f"{node.cluster.node_id} never found Redis again")

    @inlineCallbacks
    def first_shared_start(self, node, ticket):
        """Ask (the clock following each answer) until ``node`` starts through Redis; the slot."""
        answer = yield node.admit(MAILBOX, ticket)
        while isinstance(answer, Later):
            self.clock.advance(max(0.05, answer.retry_at - self.clock.seconds()))
            yield node._tick()
            answer = yield node.admit(MAILBOX, ticket)
        self.assertIsNotNone(answer.lease, f"{node.cluster.node_id} shares through Redis again")
        return answer

    @inlineCallbacks
    def solo_start(self, node, ticket):
        """One request ``node`` starts alone (and ends at once); when it started."""
        solo = yield node.admit(MAILBOX, ticket)
        self.assertIsInstance(solo, ClusterSlot)
        self.assertIsNone(solo.lease, f"{node.cluster.node_id} is still alone")
        solo.release()
        return self.clock.seconds()

    @inlineCallbacks
    def both_rejoin(self, a, b):
        """Redis is back: both find it, wait their rejoin, and share again."""
        yield self.start_redis_again()
        yield self.find_redis(a)
        yield self.find_redis(b)
        self.clock.advance(a.window + a.rejoin_lag)
        yield a._tick()
        yield b._tick()

    @inlineCallbacks
    def degraded_pair(self, **limits):
        """Two nodes that lost Redis a window ago: both may start alone now (Redis still away)."""
        a = self.node("a", **limits)
        b = self.node("b", **limits)
        yield self.server.stop()
        for node in (a, b):
            yield node.admit(MAILBOX, "Q0")
            self.assertEqual(node.state, DEGRADED)
        self.clock.advance(a.solo_wait)
        return a, b


class SlotsTests(AdmissionTestBase):
    @inlineCallbacks
    def test_concurrency_is_shared_by_every_node(self):
        a, b = self.node("a"), self.node("b")
        first = yield a.admit(MAILBOX, "Q1")
        self.clock.advance(1)
        second = yield b.admit(MAILBOX, "Q2")
        self.clock.advance(1)
        third = yield b.admit(MAILBOX, "Q3")
        self.assertIsInstance(first, ClusterSlot)
        self.assertIsInstance(second, ClusterSlot)
        self.assertIsInstance(third, Later)
        self.assertIn("in flight", third.reason)
        other = yield b.admit(OTHER, "Q4")
        self.assertIsInstance(other, ClusterSlot, "another mailbox is not limited by this one")
        first.release()
        yield a.redis.call(lambda r: r.ping())  # the release reached Redis
        self.clock.advance(1)
        fourth = yield b.admit(MAILBOX, "Q3")
        self.assertIsInstance(fourth, ClusterSlot)

    @inlineCallbacks
    def test_a_dead_nodes_slots_free_within_the_lease_ttl(self):
        a, b = self.node("a", lease_ttl=10.0), self.node("b", lease_ttl=10.0)
        for ticket in ("Q1", "Q2"):
            slot = yield a.admit(MAILBOX, ticket)
            self.assertIsInstance(slot, ClusterSlot)
            self.clock.advance(0.5)
        refused = yield b.admit(MAILBOX, "Q3")
        self.assertIsInstance(refused, Later)
        # Node a "dies": nobody renews its leases.
        self.clock.advance(9.2)
        admitted = yield b.admit(MAILBOX, "Q3")
        self.assertIsInstance(admitted, ClusterSlot)

    @inlineCallbacks
    def test_renewal_keeps_a_long_request_slot(self):
        a, b = self.node("a", lease_ttl=10.0, concurrency=1), self.node("b", lease_ttl=10.0, concurrency=1)
        slot = yield a.admit(MAILBOX, "Q1")
        self.assertIsInstance(slot, ClusterSlot)
        for _ in range(3):
            self.clock.advance(6)
            yield a._renew_and_read()
        refused = yield b.admit(MAILBOX, "Q2")
        self.assertIsInstance(refused, Later, "a renewed lease (18 s > TTL) still holds the slot")
        slot.release()
        yield a.redis.call(lambda r: r.ping())
        self.clock.advance(1)
        admitted = yield b.admit(MAILBOX, "Q2")
        self.assertIsInstance(admitted, ClusterSlot)


class PacingTests(AdmissionTestBase):
    @inlineCallbacks
    def test_rate_counts_every_node_in_a_sliding_window(self):
        # 4 messages per 10 s window, shared by a and b (concurrency high enough not to matter).
        a, b = self.node("a", rate=4.0, window=10.0, concurrency=4), self.node("b", rate=4.0, window=10.0, concurrency=4)
        starts = []
        nodes = [a, b]
        for i in range(12):
            node = nodes[i % 2]
            answer = yield node.admit(MAILBOX, f"Q{i}")
            while isinstance(answer, Later):
                self.clock.advance(max(0.01, answer.retry_at - self.clock.seconds()))
                answer = yield node.admit(MAILBOX, f"Q{i}")
            starts.append(self.clock.seconds())
            answer.release()
        for i, t in enumerate(starts):
            in_window = [s for s in starts if t <= s < t + 10.0]
            self.assertLessEqual(len(in_window), 4, f"window from start {i}: {starts}")
        # ... and not slower than the limit allows (4 per window + its margin).
        self.assertLess(starts[-1] - starts[0], 11 * a.window / 4 + 0.5, starts)
        self.assertEqual(a.window, 10.5)

    @inlineCallbacks
    def test_booked_starts_are_served_in_the_order_asked_across_nodes(self):
        a, b = self.node("a", rate=6.0, window=6.0), self.node("b", rate=6.0, window=6.0)
        asked = [(a, "A1"), (a, "A2"), (a, "A3"), (b, "B1"), (a, "A4"), (a, "A5")]
        booked = {}
        for node, ticket in asked:
            answer = yield node.admit(MAILBOX, ticket)
            booked[ticket] = answer.retry_at if isinstance(answer, Later) else self.clock.seconds()
            if not isinstance(answer, Later):
                answer.release()
        self.assertEqual(sorted(booked, key=booked.get), [t for _, t in asked])
        # A backlog on node a does not get ahead of b's message: at A4's time, A4 starts, and B1
        # (booked before A4) had its own earlier time.
        self.assertLess(booked["B1"], booked["A4"])
        self.clock.advance(booked["B1"] - self.clock.seconds())
        early = yield a.admit(MAILBOX, "A4")
        self.assertIsInstance(early, Later, "A4 cannot take B1's slot")
        b1 = yield b.admit(MAILBOX, "B1")
        self.assertIsInstance(b1, ClusterSlot)

    @inlineCallbacks
    def test_a_retry_after_pause_holds_on_every_node(self):
        a, b = self.node("a"), self.node("b")
        until = a.pause(MAILBOX, 30.0, "Graph throttled printer@example.com")
        yield a.redis.call(lambda r: r.ping())
        answer = yield b.admit(MAILBOX, "Q1")
        self.assertIsInstance(answer, Later)
        self.assertAlmostEqual(answer.retry_at, until, places=3)
        self.assertIn("throttled", answer.reason)
        self.clock.advance(31)
        answer = yield b.admit(MAILBOX, "Q1")
        self.assertIsInstance(answer, ClusterSlot)

    @inlineCallbacks
    def test_a_tenant_paused_by_one_node_is_paused_on_the_others(self):
        a, b = self.node("a"), self.node("b")
        a.pause_tenant(TENANT, self.clock.seconds() + 300, "AADSTS7000215: invalid client secret")
        yield a.redis.call(lambda r: r.ping())
        answer = yield b.admit(MAILBOX, "Q1")
        self.assertIsInstance(answer, Later, "the admission script sees the tenant's pause")
        self.assertIn("AADSTS7000215", answer.reason)
        self.assertIsNone(b.tenant_paused(TENANT))
        yield b._renew_and_read()
        until, detail = b.tenant_paused(TENANT)
        self.assertEqual(until, self.clock.seconds() + 300)
        a.resume_tenant(TENANT)
        yield a.redis.call(lambda r: r.ping())
        yield b._renew_and_read()
        self.assertIsNone(b.tenant_paused(TENANT))


class DegradedTests(AdmissionTestBase):
    @inlineCallbacks
    def test_without_redis_a_node_takes_its_share_and_rejoins(self):
        events = LogCapture.install(self)
        a = self.node("a", concurrency=4, nodes=2, rate=600.0, window=60.0)
        yield self.server.stop()
        first = yield a.admit(MAILBOX, "Q0")
        self.assertEqual(a.state, DEGRADED)
        # What Redis counted in the last window is unknown here: nothing starts alone before
        # a whole window has passed since Redis went away.
        self.assertIsInstance(first, Later)
        self.assertAlmostEqual(first.retry_at, a.state_since + a.window, places=3)
        self.clock.advance(a.window)
        slots = []
        for i in range(3):
            answer = yield a.admit(MAILBOX, f"Q{i}")
            slots.append(answer)
            self.clock.advance(0.5)
        self.assertEqual([type(s) for s in slots], [ClusterSlot, ClusterSlot, Later],
                         "half of concurrency 4 while Redis is away")
        lines = [e for e in events if e.get("cluster_state") == DEGRADED]
        self.assertEqual(len(lines), 1, "one 'cluster state degraded' line, not one per message")
        # Redis comes back (same socket, empty).  The node writes its solo requests still
        # running into Redis as leases (every node counts them now) and waits a window (+ the
        # time the other nodes may take to find Redis too) so that their solo starts, which
        # Redis never saw, have left the window; then it shares again.
        self.server = yield start_redis_server(reactor, self.directory, 0, ())
        self.addCleanup(self.server.stop)
        for _ in range(10):  # each probe waits (up to the timeouts) for txredisapi to reconnect
            yield a._tick()
            if a.state != DEGRADED:
                break
        self.assertEqual(a.state, "rejoining")
        leases = a._keys(MAILBOX)[0]
        in_redis = yield a.redis.call(lambda r: r.zrange(leases, 0, -1))
        self.assertEqual(sorted(in_redis), sorted(slot.lease for slot in slots[:2]), "the solo requests count")
        answer = yield a.admit(MAILBOX, "Q9")
        self.assertIsInstance(answer, Later)
        self.clock.advance(a.window + a.rejoin_lag)
        yield a._tick()
        self.assertEqual(a.state, OK)
        self.assertEqual(len([e for e in events if e.get("cluster_state") == OK]), 1)
        admitted = []
        for i in range(5):
            self.clock.advance(0.2)
            answer = yield a.admit(MAILBOX, f"R{i}")
            admitted.append(answer)
        self.assertEqual(sum(isinstance(x, ClusterSlot) for x in admitted), 2, "two of 4 still run")
        for slot in slots[:2]:
            slot.release()
        yield a.redis.call(lambda r: r.ping())  # the releases' ZREMs went first
        for i in range(5, 10):
            self.clock.advance(0.2)
            answer = yield a.admit(MAILBOX, f"R{i}")
            admitted.append(answer)
        self.assertEqual(sum(isinstance(x, ClusterSlot) for x in admitted), 4, "the whole limit again")


class RejoinTests(AdmissionTestBase):
    """
    After an outage the nodes find Redis at different times: each reconnects on its own
    schedule.  A node that shares again through Redis (whose counts start empty) must not
    overlap, within one window, a node that is still starting alone.
    """

    @inlineCallbacks
    def degraded_pair_redis_back(self):
        a, b = yield self.degraded_pair(concurrency=4, nodes=2, rate=600.0, window=60.0, max_hold=2.0)
        yield self.start_redis_again()
        return a, b

    @inlineCallbacks
    def test_a_node_rejoins_only_after_the_slowest_node_has_stopped_starting_alone(self):
        a, b = yield self.degraded_pair_redis_back()
        yield self.find_redis(a)
        # b's next reconnection is up to ``retry`` away, then one connection attempt, then its
        # next probe and that probe's reply: until then it starts alone, as it should.
        connection = b.redis.config
        slowest = b.cluster.retry + connection.connect_timeout + b.tick_interval + connection.reply_timeout
        self.clock.advance(slowest - 0.01)
        last_solo_start = yield self.solo_start(b, "B1")
        yield self.find_redis(b)
        # a shares again through Redis, whose window starts empty: its first start must come a
        # whole window after b's last solo start, or the two add up past the limit.
        answer = yield self.first_shared_start(a, "A1")
        self.assertGreaterEqual(self.clock.seconds(), last_solo_start + a.window)
        answer.release()

    @inlineCallbacks
    def test_a_start_paced_while_alone_does_not_happen_after_redis_is_back(self):
        a, b = yield self.degraded_pair_redis_back()
        first = yield b.admit(MAILBOX, "B1")
        self.assertIsNone(first.lease)
        # The next solo start is paced a little later (a Deferred waiting on the clock) ...
        paced = b.admit(MAILBOX, "B2")
        self.assertFalse(paced.called)
        # ... and Redis answers b's probe before that time comes: b no longer starts alone.
        yield self.find_redis(b)
        self.clock.advance(b.solo_interval)
        answer = yield paced
        self.assertIsInstance(answer, Later, "a solo start after b found Redis again")
        first.release()
