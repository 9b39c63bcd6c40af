"""
Findings of the third review (07459a1, a157593), each failing on a157593: the run_id check a
node makes on a connection made anew (L{gateway.cluster.continuity}), and pauses taken while a
node was alone.  Like test_cluster_admission: a real redis-server, the admission objects on a
L{Clock}, txredisapi reconnecting on the real reactor.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks

from gateway.cluster.admission import DEGRADED, OK, REJOINING, ClusterSlot, Later
from gateway.testing.logs import LogCapture
from gateway.testing.policy import start_redis_server
from tests.test_cluster_admission import MAILBOX, OTHER, TENANT, AdmissionTestBase


class ContinuityTestBase(AdmissionTestBase):
    @inlineCallbacks
    def restart_redis(self):
        """A restart without persistence: the new server has another run_id and no data."""
        yield self.server.stop()
        yield self.start_redis_again()

    def count_server_checks(self, node) -> list:
        calls: list = []
        same_server = node._continuity.same_server

        def counting(r):
            calls.append(r)
            return same_server(r)

        node._continuity.same_server = counting
        return calls


class RestartedServerTests(ContinuityTestBase):
    @inlineCallbacks
    def test_a_redis_restarted_empty_costs_one_rejoin_not_two(self):
        """
        Redis restarts without persistence; a's next tick sees another run_id and waits a
        window + rejoin_lag.  It kept the old epoch meanwhile (nothing to renew while rejoining
        reads it), so its first ADMIT once OK meets the new epoch and takes it for a second lost
        state: another warning and another whole wait (156 s by default) for one restart.
        """
        events = LogCapture.install(self)
        a = self.node("a", concurrency=2, nodes=2)
        slot = yield a.admit(MAILBOX, "A1")
        self.assertIsInstance(slot, ClusterSlot)
        slot.release()
        yield self.restart_redis()
        yield self.reconnected(a)
        yield a._tick()
        self.assertEqual(a.state, REJOINING, "the run_id check saw the restart")
        self.clock.advance(a.window + a.rejoin_lag)
        yield a._tick()
        self.assertEqual(a.state, OK)
        answer = yield a.admit(MAILBOX, "A2")
        self.assertEqual(a.state, OK, "one Redis restart, two rejoin waits")
        self.assertIsInstance(answer, ClusterSlot)
        lost = [e for e in events if e.get("cluster_state") == REJOINING]
        self.assertEqual(len(lost), 1, "one warning per restart")

    @inlineCallbacks
    def test_a_flap_while_rejoining_leaves_no_stale_server_behind(self):
        """
        Redis restarts again while a rejoins: the wait restarts (right), but a keeps the run_id
        of the server before the flap.  Once OK it does not ask again, so the next harmless
        reconnection to the same server is taken for another server: a false warning and wait.
        """
        events = LogCapture.install(self)
        a = self.node("a", concurrency=2, nodes=2)
        slot = yield a.admit(MAILBOX, "A1")
        slot.release()
        yield self.restart_redis()
        yield self.reconnected(a)
        yield a._tick()
        self.assertEqual(a.state, REJOINING)
        yield self.restart_redis()  # the flap
        yield self.reconnected(a)
        yield a._tick()
        self.assertEqual(a.state, REJOINING)
        self.clock.advance(a.window + a.rejoin_lag)
        yield a._tick()
        self.assertEqual(a.state, OK)
        yield a.admit(MAILBOX, "A2")
        self.assertEqual(a.state, OK)
        # The same server, a new connection (an idle timeout, a network blip).
        yield a.redis.call(lambda r: r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"))
        yield self.reconnected(a)
        yield a._tick()
        self.assertEqual(a.state, OK, "a reconnection to the same server is no lost state")
        self.assertEqual(len([e for e in events if e.get("cluster_state") == REJOINING]), 1)


class ServerCheckCostTests(ContinuityTestBase):
    @inlineCallbacks
    def test_a_burst_of_asks_on_a_new_connection_reads_the_server_once(self):
        """
        Every admit that starts before the first INFO reply sends its own INFO (a node started
        with a backlog asks for each queued mailbox at once), and the reply taken for a
        connection that was not made yet leaves the node unsure for one more round.
        """
        a = self.node("a", concurrency=2, nodes=2)
        checks = self.count_server_checks(a)
        mailboxes = [(TENANT, f"m{i}@example.com") for i in range(6)]
        answers = yield gatherResults([a.admit(m, f"T{i}") for i, m in enumerate(mailboxes)])
        self.assertEqual([type(x) for x in answers], [ClusterSlot] * 6)
        self.clock.advance(1.0)
        yield gatherResults([a.admit(m, f"U{i}") for i, m in enumerate(mailboxes)])
        self.assertEqual(len(checks), 1, "one INFO per connection, not one per admit")

    @inlineCallbacks
    def test_a_redis_user_without_info_still_shares(self):
        """
        INFO is in ACL category @dangerous: a least-privilege user (``+@all -@dangerous``) gets
        NOPERM.  That error degrades the node (its share alone), the probe finds Redis at once,
        it rejoins, asks INFO again, degrades again: it never shares, where before a157593 it did.
        """
        a = self.node("a", concurrency=2, nodes=2)
        yield a.redis.call(lambda r: r.execute_command("ACL", "SETUSER", "default", "-@dangerous"))
        answer = yield a.admit(MAILBOX, "A1")
        self.assertNotEqual(a.state, DEGRADED, "Redis answers every call the cluster needs")
        self.assertIsInstance(answer, ClusterSlot)
        answer.release()
        self.clock.advance(1.0)
        yield a._tick()
        self.assertEqual(a.state, OK)


class PausesTakenAloneTests(ContinuityTestBase):
    @inlineCallbacks
    def test_a_tenant_pause_taken_while_alone_survives_the_rejoin(self):
        """
        07459a1 shares a mailbox's Retry-After pause once the node shares again; a tenant pause
        (admin consent missing) taken while degraded is neither shared nor even kept: the first
        tick while rejoining replaces the node's table with Redis's, which lacks it.
        """
        a = self.node("a", concurrency=2, nodes=2, window=60.0)
        b = self.node("b", concurrency=2, nodes=2, window=60.0)
        yield self.server.stop()
        yield a.admit(MAILBOX, "Q0")
        self.assertEqual(a.state, DEGRADED)
        until = self.clock.seconds() + 3600.0
        a.pause_tenant(TENANT, until, "admin consent missing")
        yield self.start_redis_again()
        yield self.find_redis(a)
        self.assertEqual(a.state, REJOINING)
        yield a._tick()  # watches Redis while rejoining: reads the tenants' table
        self.assertIsNotNone(a.tenant_paused(TENANT), "a forgot its own tenant pause")
        self.clock.advance(a.window + a.rejoin_lag)
        yield a._tick()
        self.assertEqual(a.state, OK)
        yield a.redis.call(lambda r: r.ping())  # a's TENANT went first
        yield self.reconnected(b)  # b never asked while Redis was away: it is not degraded
        answer = yield b.admit(MAILBOX, "B1")
        self.assertIsInstance(answer, Later, "b never heard of the tenant pause")
        self.assertIn("admin consent", answer.reason)


class HeldAskTests(ContinuityTestBase):
    @inlineCallbacks
    def test_a_held_ask_checks_the_server_of_a_connection_made_meanwhile(self):
        """
        ADMIT holds A2's slot ({2, at}: a deferLater, then the script again).  Redis restarts
        meanwhile and reloads a snapshot older than A1's lease; _ask_again asks the new server
        straight away, without the run_id check admit() makes: A2 starts beside A1 on a mailbox
        with mailbox_concurrency 1.
        """
        a = self.node("a", concurrency=1, nodes=2, max_hold=2.0)
        first = yield a.admit(OTHER, "A0")  # the epoch and the server are known
        first.release()
        yield a.redis.call(lambda r: r.execute_command("SAVE"))
        self.clock.advance(1.0)
        running = yield a.admit(MAILBOX, "A1")
        self.assertIsInstance(running, ClusterSlot)
        held = a.admit(MAILBOX, "A2")
        answers: list = []
        held.addCallback(lambda answer: answers.append(answer) or answer)
        yield a.redis.call(lambda r: r.ping())  # A2's ADMIT has been answered: {2, at}
        self.assertEqual(answers, [], "A2's slot is held")
        yield self.server.stop()
        self.server = yield start_redis_server(reactor, self.directory, 0, ())  # reloads dump.rdb
        self.addCleanup(self.server.stop)
        yield self.reconnected(a)
        self.clock.advance(0.5)
        answer = yield held
        self.assertIsInstance(answer, Later, "A1 is still in flight: A2 exceeds mailbox_concurrency 1")
        running.release()


class TimerTests(AdmissionTestBase):
    def test_a_failing_step_does_not_stop_the_timer(self):
        """A bug in one step (here: forgetting idle mailboxes) is logged; the next tick still comes."""
        a = self.node("a")
        calls = []

        def broken(now):
            calls.append(now)
            raise RuntimeError("a bug in a timer step")

        a._forget_idle = broken
        a.startService()
        self.addCleanup(a.stopService)
        self.clock.advance(a.tick_interval)
        self.assertEqual(len(calls), 2, "the timer ran again after the failing step")
        self.assertTrue(a._ticker.running)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
