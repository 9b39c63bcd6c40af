"""
Outages that are not one clean "Redis away, Redis back" (found by the review of 8c8e60b; each
test fails on it): a Redis restart no node noticed (emptied, or reloading an older snapshot),
Redis flapping while a node rejoins, solo requests that outlast the rejoin wait, and a
connection txredisapi gave up on; and races found by the second review (a burst of first
asks, a request that ends while its lease is being written back).  Like test_cluster_admission: a real
redis-server, the admission objects on a L{Clock}, txredisapi reconnecting on the real reactor.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks

from gateway.cluster.admission import DEGRADED, OK, REJOINING, ClusterSlot, Later
from gateway.testing.logs import LogCapture
from gateway.testing.policy import start_redis_server
from tests.test_cluster_admission import MAILBOX, OTHER, AdmissionTestBase


class FlappingAndLongRequestsTests(AdmissionTestBase):
    @inlineCallbacks
    def restart_redis(self):
        yield self.server.stop()
        yield self.start_redis_again()

    @inlineCallbacks
    def test_a_redis_restart_nobody_noticed_does_not_double_the_concurrency(self):
        """
        Redis restarts (empty) between two calls of the nodes: no call failed, so nobody
        degrades, and the leases of the requests in flight are gone.  The next node to ask
        got a slot the mailbox does not have (the renewal saw the leases gone, but only logged).
        Now the epoch is gone too: a, which relied on it, writes its requests back and waits.
        """
        a = self.node("a", concurrency=2, nodes=2)
        b = self.node("b", concurrency=2, nodes=2)
        running = []
        for ticket in ("A1", "A2"):
            slot = yield a.admit(MAILBOX, ticket)
            self.assertIsInstance(slot, ClusterSlot)
            running.append(slot)
            self.clock.advance(0.5)
        yield self.restart_redis()
        yield self.reconnected(a)
        yield self.reconnected(b)
        yield a._tick()  # a renews its leases: Redis has forgotten them
        answer = yield b.admit(MAILBOX, "B1")
        self.assertEqual(a.state, REJOINING, "a saw that Redis lost the cluster's state")
        self.assertIsInstance(answer, Later,
                              "a's two requests are still in flight: a third exceeds mailbox_concurrency 2")

    @inlineCallbacks
    def test_a_first_start_on_an_empty_redis_shares_at_once(self):
        """The epoch a first node writes costs nothing: only a node that knew another one waits."""
        a, b = self.node("a", concurrency=2, nodes=2), self.node("b", concurrency=2, nodes=2)
        first = yield a.admit(MAILBOX, "A1")
        self.clock.advance(0.5)  # the mailbox's pace
        second = yield b.admit(MAILBOX, "B1")
        self.assertEqual((type(first), type(second)), (ClusterSlot, ClusterSlot))
        self.assertEqual((a.state, b.state), (OK, OK))

    @inlineCallbacks
    def test_a_pause_taken_while_alone_is_shared_once_the_node_rejoins(self):
        """Graph's Retry-After seen by a node without Redis holds for every node once it shares again."""
        a, b = yield self.degraded_pair(concurrency=4, nodes=2, rate=600.0, window=60.0, max_hold=0.0)
        a.pause(MAILBOX, 600.0, "Graph throttled this mailbox (429)")
        yield self.both_rejoin(a, b)
        self.assertEqual((a.state, b.state), (OK, OK))
        yield a.redis.call(lambda r: r.ping())  # a's PAUSE went first
        answer = yield b.admit(MAILBOX, "B1")
        self.assertIsInstance(answer, Later)
        self.assertIn("429", answer.reason)

    @inlineCallbacks
    def test_a_rejoined_node_leaves_room_for_the_solo_requests_still_running_elsewhere(self):
        """
        b's solo requests (not in Redis) outlast a's rejoin wait (a long upload): a, sharing
        again through an empty Redis, must not take the whole concurrency meanwhile.
        """
        a, b = yield self.degraded_pair(concurrency=4, nodes=2, rate=600.0, window=60.0, max_hold=0.0)
        solo = []
        for ticket in ("B1", "B2"):
            slot = yield b.admit(MAILBOX, ticket)
            self.assertIsInstance(slot, ClusterSlot)
            self.assertIsNone(slot.lease)
            solo.append(slot)
            self.clock.advance(0.5)
        yield self.both_rejoin(a, b)
        self.assertEqual(a.state, OK)
        admitted = []
        for i in range(6):
            self.clock.advance(0.2)
            answer = yield a.admit(MAILBOX, f"A{i}")
            if isinstance(answer, ClusterSlot):
                admitted.append(answer)
        in_flight = len(admitted) + sum(1 for s in solo if not s.released)
        self.assertLessEqual(in_flight, 4, f"{len(admitted)} through Redis + 2 solo > mailbox_concurrency 4")

    @inlineCallbacks
    def test_redis_flapping_while_a_node_rejoins_does_not_overlap_solo_and_shared_starts(self):
        """
        Redis comes back (a finds it), goes away again, and comes back 20 s later.  b only ever
        sees the second return, so b may start alone until rejoin_lag after it; a, which does not
        talk to Redis while rejoining, still counts its wait from the first return.
        """
        a, b = yield self.degraded_pair(concurrency=4, nodes=2, rate=600.0, window=60.0, max_hold=2.0)
        self.server = yield start_redis_server(reactor, self.directory, 0, ())
        self.addCleanup(self.server.stop)
        yield self.find_redis(a)
        self.assertEqual(a.state, REJOINING)
        yield self.server.stop()  # the flap: b's probes all fail meanwhile
        self.clock.advance(20.0)
        self.server = yield start_redis_server(reactor, self.directory, 0, ())
        self.addCleanup(self.server.stop)
        # b finds Redis as late as it may: rejoin_lag after it is back.
        self.clock.advance(b.rejoin_lag - 0.01)
        last_solo_start = yield self.solo_start(b, "B1")
        yield self.find_redis(b)
        yield self.reconnected(a)
        answer = yield self.first_shared_start(a, "A1")
        self.assertGreaterEqual(self.clock.seconds(), last_solo_start + a.window,
                                "a's first shared start is within one window of b's last solo start")
        answer.release()


class StuckConnectionTests(AdmissionTestBase):
    """
    rejoin_lag assumes every live node's connection keeps retrying.  txredisapi gives up for
    good (factory.stopTrying) when AUTH or SELECT fails on a new connection, a reply timeout
    included; nothing in RedisConnection starts it again, so the node stays degraded (and
    starts alone) for as long as it runs, while the others share the whole limit through Redis.
    """

    server_args = ("--requirepass", "s3cret", "--enable-debug-command", "yes")

    def admission(self, name):
        from gateway.cluster.admission import ClusterAdmission
        from gateway.config.cluster import ClusterConfig
        from gateway.config.secrets import Secret

        redis = self.connect(password=Secret("s3cret"), connect_timeout=1.0, reply_timeout=1.0)
        redis.reconnect_within = 1.0
        cluster = ClusterConfig(name="c1", node_id=name, expected_nodes=2, lease_ttl=10.0, retry=1.0,
                                rate_window=60.0)
        return ClusterAdmission(redis, cluster, self.clock, concurrency=2, rate=600.0, burst=1, max_hold=0.0)

    @inlineCallbacks
    def test_a_node_whose_reconnection_auth_timed_out_finds_redis_again(self):
        from gateway.config.secrets import Secret

        a = self.admission("a")
        yield a.redis.call(lambda r: r.ping())
        admin = self.connect(password=Secret("s3cret"), connect_timeout=1.0, reply_timeout=10.0)
        yield admin.call(lambda r: r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
        # Redis is busy for 3 s (a slow fork, a big key being freed, ...): a's reconnection
        # (1 s after the kill) gets no answer to its AUTH within reply_timeout.
        yield admin.call(lambda r: r.execute_command("DEBUG", "SLEEP", "3"))
        yield admin.call(lambda r: r.ping())  # Redis answers everybody again
        for _ in range(10):
            yield a._tick()
            if a.state != DEGRADED:
                break
        self.assertNotEqual(a.state, DEGRADED, f"Redis has answered for a while; a still starts alone"
                            f" (its txredisapi factory gave up: stopped={a.redis._factory.stopped})")


class EpochRaceTests(AdmissionTestBase):
    @inlineCallbacks
    def test_concurrent_first_asks_on_a_new_cluster_all_deliver(self):
        """
        A node with no epoch yet (a fresh start, or just after rejoining) sends several ADMITs
        before the first reply: the first creates the epoch, the others come back {3, E, '0'}
        when the node already knows E: that is no lost state (no REJOINING, no warning).
        """
        events = LogCapture.install(self)
        a = self.node("a", concurrency=2, nodes=2)
        answers = yield gatherResults([a.admit(MAILBOX, "A1"), a.admit(OTHER, "A2")])
        self.assertEqual(a.state, OK, "a new cluster must deliver at once (no false 'Redis lost its state')")
        self.assertEqual([type(x) for x in answers], [ClusterSlot, ClusterSlot])
        self.assertEqual([e for e in events if "lost the cluster's state" in str(e.get("log_format", ""))], [])

    @inlineCallbacks
    def test_a_burst_right_after_rejoining_does_not_rejoin_again(self):
        """
        After an outage the node forgets its epoch (back() sets ""): with no lease to renew
        while rejoining it learns the epoch only from its first ADMITs once OK, and a burst of
        them sends it back to REJOINING for another window + rejoin_lag.
        """
        a = self.node("a", concurrency=4, nodes=2, window=60.0)
        yield self.server.stop()
        yield a.admit(MAILBOX, "Q0")
        self.assertEqual(a.state, DEGRADED)
        yield self.start_redis_again()
        yield self.find_redis(a)
        self.clock.advance(a.window + a.rejoin_lag)
        yield a._tick()
        self.assertEqual(a.state, OK)
        answers = yield gatherResults([a.admit(MAILBOX, "A1"), a.admit(OTHER, "A2")])
        self.assertEqual(a.state, OK, "the node rejoined a second time after its first burst")
        self.assertEqual([type(x) for x in answers], [ClusterSlot, ClusterSlot])


class PersistedRestartTests(AdmissionTestBase):
    @inlineCallbacks
    def test_a_restart_that_reloads_an_older_snapshot_does_not_double_the_concurrency(self):
        """
        Redis restarts with RDB persistence (Debian's default redis.conf saves snapshots) and
        reloads a snapshot taken before the requests now in flight: their leases are gone, but
        the epoch, written once when the cluster began, is in the snapshot.  No call failed and
        the epoch matches; the server's run_id, read again on the new connection, does not.
        """
        a = self.node("a", concurrency=2, nodes=2)
        b = self.node("b", concurrency=2, nodes=2)
        first = yield a.admit(MAILBOX, "A1")
        self.assertIsInstance(first, ClusterSlot)
        yield a.redis.call(lambda r: r.execute_command("SAVE"))  # an hourly snapshot, say
        self.clock.advance(0.5)
        second = yield a.admit(MAILBOX, "A2")
        self.assertIsInstance(second, ClusterSlot)
        yield self.server.stop()
        self.server = yield start_redis_server(reactor, self.directory, 0, ())  # reloads dump.rdb
        self.addCleanup(self.server.stop)
        yield self.reconnected(a)
        yield self.reconnected(b)
        self.clock.advance(0.5)
        yield a._tick()  # a renews: A2's lease is gone (logged only), A1's came back from the snapshot
        self.clock.advance(0.5)
        answer = yield b.admit(MAILBOX, "B1")
        self.assertIsInstance(answer, Later,
                              "A1 and A2 are still in flight: a third exceeds mailbox_concurrency 2")


class AdoptRaceTests(AdmissionTestBase):
    @inlineCallbacks
    def test_a_lease_released_while_its_adopt_is_in_flight_does_not_hold_a_slot(self):
        """
        A request admitted through Redis runs on while Redis is away (the node degrades), and
        ends while the probe's ADOPT is on its way: _release sends no ZREM (the node is still
        degraded), ADOPT then writes the lease, and nothing removes it: the mailbox has one slot
        less on every node until the lease expires (lease_ttl, 30 s by default).
        """
        a = self.node("a", concurrency=2, nodes=2, lease_ttl=30.0, window=60.0)
        slot = yield a.admit(MAILBOX, "A1")
        self.assertIsNotNone(slot.lease)
        yield self.server.stop()
        yield a.admit(MAILBOX, "A2")
        self.assertEqual(a.state, DEGRADED)
        self.server = yield start_redis_server(reactor, self.directory, 0, ())
        self.addCleanup(self.server.stop)
        for _ in range(20):  # let txredisapi reconnect without telling the admission
            try:
                yield a.redis.call(lambda r: r.ping())
                break
            except Exception:  # noqa: BLE001 - still reconnecting
                continue
        probe = a._tick()  # ADOPT (a's running lease) is sent ...
        slot.release()  # ... and the request ends before its reply
        yield probe
        self.assertEqual(a.state, "rejoining")
        yield a.redis.call(lambda r: r.ping())
        leases = yield a.redis.call(lambda r: r.zrange(a._keys(MAILBOX)[0], 0, -1))
        self.assertEqual(leases, [], "a lease of a request that has ended still holds a slot")
