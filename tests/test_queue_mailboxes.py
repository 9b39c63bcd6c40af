"""
Issue 10, runner side: per-mailbox ready queues, backoff that counts failures (not waits), prompt
drain after an outage, quiet state-change logs.

The runner runs on a real DirectorySpool whose thread jobs run inline, with the real
GraphDeliverer in front of an in-memory Graph that answers on the fake clock, so every figure
here (requests, reads, timer firings) is counted, never timed.
"""

from __future__ import annotations

import os

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.graph import GraphConfig
from gateway.config.model import QueueConfig
from gateway.config.secrets import Secret
from gateway.delivery.graph import deliverer as deliverer_module
from gateway.delivery.graph.client import GraphResponse, GraphTransportError
from gateway.delivery.graph.credentials import (
    ConfigCredentialResolver,
    credentials_from_config,
)
from gateway.delivery.graph.deliverer import GraphDeliverer
from gateway.delivery.graph.token import TokenError
from gateway.delivery.interfaces import Delivered
from gateway.queue.runner import QueueRunner
from gateway.spool.entry import Envelope, Provenance
from gateway.spool.store import DirectorySpool
from gateway.testing.delivery import FakeTokenSource, ScriptedDeliverer
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.graph_helpers import simple_message

START = 1_700_000_000.0
PROVENANCE = Provenance("192.0.2.1", "client.example", "default")


def graph_config(**kw):
    base = GraphConfig(tenant_id="t", client_id="c", authority="https://login.test/t", graph_url="https://graph.test",
                       client_secret=Secret("x"))
    return attrs.evolve(base, **kw)


class ScriptedGraph:
    """
    Answers sendMail after ``latency`` on the clock.  ``script`` is a list of answers used in
    order (a GraphResponse, or an exception to raise); when empty, ``default`` answers.
    """

    def __init__(self, clock, latency=0.2):
        self.clock = clock
        self.latency = latency
        self.script = []
        self.default = GraphResponse(202, request_id="r")
        self.starts = []
        self.in_flight = {}
        self.max_in_flight = {}

    def send_mime(self, graph_url, mailbox, token, mime):
        self.starts.append((self.clock.seconds(), mailbox))
        self.in_flight[mailbox] = self.in_flight.get(mailbox, 0) + 1
        self.max_in_flight[mailbox] = max(self.max_in_flight.get(mailbox, 0), self.in_flight[mailbox])
        answer = self.script.pop(0) if self.script else self.default
        d = Deferred()

        def respond():
            self.in_flight[mailbox] -= 1
            if isinstance(answer, Exception):
                d.errback(answer)
            else:
                d.callback(answer)

        self.clock.callLater(self.latency, respond)
        return d

    def started(self, mailbox=None):
        return [t for t, m in self.starts if mailbox is None or m == mailbox]


class BoundedClock(ImmediateReactor):
    """
    A clock whose advance() gives up after ``limit`` calls: a callLater(0) loop (the busy loop
    this file is about) would otherwise never let advance() return.
    """

    limit = 20_000

    def advance(self, amount):
        self.rightNow += amount
        self._sortCalls()
        fired = 0
        while self.calls and self.calls[0].getTime() <= self.seconds():
            fired += 1
            if fired > self.limit:
                raise AssertionError(f"more than {self.limit} timer calls at one instant: a busy loop")
            call = self.calls.pop(0)
            call.called = 1
            call.func(*call.args, **call.kw)
            self._sortCalls()


class MailboxRunnerBase(SynchronousTestCase):
    queue_config = QueueConfig(concurrency=16, retry_schedule=(60.0, 300.0, 900.0), jitter=0.0,
                               max_lifetime=86400.0, shutdown_grace=30.0)

    def setUp(self):
        self.clock = BoundedClock()
        self.clock.advance(START)
        self.directory = os.path.abspath(self.mktemp())
        self.spool = self.new_spool()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.graph = ScriptedGraph(self.clock)
        self.tokens = FakeTokenSource()
        self.prepared = []
        # Every preparation counts, in the file threads (big messages) or not (small ones).
        prepare = deliverer_module.prepare_message

        def counting_prepare(path, *args):
            self.prepared.append(path)
            return prepare(path, *args)

        self.patch(deliverer_module, "prepare_message", counting_prepare)

    def new_spool(self):
        spool = DirectorySpool(self.directory, SynchronousThreadPool(), self.clock)
        self.addCleanup(spool.close)
        return spool

    def counting_blocking(self, f, *args):
        return maybeDeferred(f, *args)

    def new_deliverer(self, **graph_overrides):
        options = dict(mailbox_concurrency=2, mailbox_rate=60_000.0, mailbox_burst=100)
        options.update(graph_overrides)
        cfg = graph_config(**options)
        return GraphDeliverer(cfg, self.graph, self.tokens, ConfigCredentialResolver(credentials_from_config(cfg)),
                              self.clock, blocking=self.counting_blocking)

    def start(self, deliverer, config=None, spool=None):
        runner = QueueRunner(spool or self.spool, deliverer, config or self.queue_config, self.clock,
                             random=lambda: 0.5)
        runner.startService()
        self.addCleanup(lambda: runner.running and runner.stopService())
        self.successResultOf(runner.ready)
        return runner

    def accept(self, sender="alice@contoso.test", spool=None):
        writer = self.successResultOf((spool or self.spool).open_writer())
        writer.write(simple_message(sender=sender).as_bytes().replace(b"\n", b"\r\n"))
        return self.successResultOf(writer.commit(Envelope(sender, ("bob@fabrikam.test",)), PROVENANCE))

    def run_until(self, condition, limit=100_000):
        """Advance the clock from one scheduled call to the next until ``condition()`` holds."""
        for _ in range(limit):
            if condition():
                return
            calls = self.clock.getDelayedCalls()
            if not calls:
                self.fail("condition never met, and nothing is scheduled")
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))
        self.fail("condition never met")

    def settle(self, runner, until):
        """Let deliveries in flight finish, without going past ``until`` (absolute)."""
        while runner.in_flight:
            calls = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= until]
            if not calls:
                break
            self.clock.advance(max(0.0, min(calls) - self.clock.seconds()))
        self.clock.advance(max(0.0, until - self.clock.seconds()))

    def queued_ids(self):
        from gateway.spool.disk import SpoolDisk
        return SpoolDisk(self.directory).queue_ids()

    def record(self, queue_id):
        from gateway.spool.disk import SpoolDisk
        return SpoolDisk(self.directory).load(queue_id)


class BusyLoopTests(MailboxRunnerBase):
    def test_no_timer_rearm_while_every_slot_is_busy(self):
        """Finding: with all slots busy, _pump → _arm_timer → callLater(0) looped until a slot freed."""
        deliverer = ScriptedDeliverer("wait", "wait", "wait")
        runner = self.start(deliverer, config=attrs.evolve(self.queue_config, concurrency=1))
        from tests.test_queue_runner import ENVELOPE, MESSAGE
        for _ in range(3):
            writer = self.successResultOf(self.spool.open_writer())
            writer.write(MESSAGE)
            self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        self.assertEqual((len(deliverer.calls), runner.in_flight), (1, 1))
        armed = []
        original = self.clock.callLater

        def counting(delay, f, *args, **kw):
            if getattr(f, "__name__", "") == "_timer_fired":
                armed.append(delay)
            if len(armed) > 100:
                # On a task.Clock a callLater(0) loop never lets advance() return: break it.
                raise RuntimeError("busy loop")
            return original(delay, f, *args, **kw)

        self.clock.callLater = counting
        self.clock.advance(0)
        self.clock.advance(5)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(armed, [], "the runner re-armed a timer while no slot could free")
        self.assertEqual(len(deliverer.calls), 1)
        deliverer.pending[0].callback(Delivered())
        self.assertEqual(len(deliverer.calls), 2)


class AdmissionTests(MailboxRunnerBase):
    def test_each_message_is_prepared_once_under_a_backlog(self):
        """Finding: ~10 admission refusals per delivered message, each reading the message."""
        deliverer = self.new_deliverer()
        self.start(deliverer)
        entries = [self.accept() for _ in range(40)]
        self.run_until(lambda: not self.queued_ids())
        self.assertEqual(len(self.prepared), len(entries))
        self.assertEqual(deliverer.stats.deferred, 0)
        self.assertEqual(self.graph.max_in_flight["alice@contoso.test"], 2)
        # 40 messages, 2 at a time, 0.2 s each: the ceiling is 10/s, so about 4 s.
        self.assertLessEqual(max(self.graph.started()) - START, 4.0)

    def test_paused_mailbox_costs_nothing_per_queued_message(self):
        """A 429 pauses one mailbox: its queue is not read or retried meanwhile; others flow."""
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(429, "ApplicationThrottled", "slow down", retry_after=30.0)]
        runner = self.start(deliverer)
        self.accept("alice@contoso.test")
        self.settle(runner, START + 0.2)  # the 429 arrives
        prepared_before = len(self.prepared)
        alice = {self.accept("alice@contoso.test").message_path for _ in range(30)}
        for _ in range(10):
            self.accept("carol@contoso.test")
        self.run_until(lambda: len(self.graph.started("carol@contoso.test")) == 10)
        self.settle(runner, START + 25)
        self.assertEqual(self.graph.started("alice@contoso.test"), [START])
        self.assertEqual(len(self.prepared) - prepared_before, 10)
        self.assertFalse(alice & set(self.prepared), "the paused mailbox's messages were read")
        self.run_until(lambda: not self.queued_ids())
        self.assertGreaterEqual(min(self.graph.started("alice@contoso.test")[1:]), START + 30)
        self.assertEqual(len(self.prepared), 42)


class BackoffTests(MailboxRunnerBase):
    def test_a_503_after_a_429_gets_the_first_backoff_step(self):
        """Finding: 429 Retry-After 5 then 503 waited the 5-minute step."""
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(429, "ApplicationThrottled", "slow down", retry_after=5.0),
                             GraphResponse(503, "ServiceUnavailable", "busy")]
        self.start(deliverer)
        entry = self.accept()
        self.run_until(lambda: len(self.graph.starts) == 2)
        self.assertLess(self.graph.starts[1][0], START + 5.2 + 0.2)
        self.run_until(lambda: self.record(entry.queue_id).attempts == 2)
        failed_at = self.clock.seconds()
        record = self.record(entry.queue_id)
        self.assertEqual(record.next_attempt_at - failed_at, 60.0)
        self.assertEqual(record.attempts, 2)


class OutageTests(MailboxRunnerBase):
    queue_config = attrs.evolve(MailboxRunnerBase.queue_config, retry_schedule=(300.0, 900.0))

    def test_messages_deferred_by_a_graph_outage_go_as_soon_as_graph_answers_again(self):
        """Finding: after an outage, deferred messages kept their long backoff (here 300 s)."""
        deliverer = self.new_deliverer(mailbox_rate=600.0, mailbox_burst=1)  # one start every 0.1 s
        self.graph.script = [GraphResponse(503, "ServiceUnavailable", "down")] * 5
        runner = self.start(deliverer)
        for _ in range(5):
            self.accept()
        self.settle(runner, START + 2)
        self.assertEqual(len(self.queued_ids()), 5)
        self.settle(runner, START + 12)
        self.accept()  # Graph is back: this one goes through, the five follow at the mailbox's pace
        self.run_until(lambda: not self.queued_ids(), limit=400)
        self.assertLessEqual(max(self.graph.started()) - START, 12 + 2)
        starts = self.graph.started()[5:]
        self.assertEqual(len(starts), 6)
        self.assertGreaterEqual(min(b - a for a, b in zip(starts, starts[1:], strict=False)), 0.1 - 1e-6)
        self.assertEqual(runner.stats.released_after_outage, 5)

    def test_token_endpoint_outage_then_recovery(self):
        deliverer = self.new_deliverer()
        self.tokens.failing = True
        runner = self.start(deliverer)
        for _ in range(3):
            self.accept()
        self.settle(runner, START + 1)
        self.assertEqual(len(self.queued_ids()), 3)
        self.tokens.failing = False
        self.settle(runner, START + 20)
        self.accept()
        self.run_until(lambda: not self.queued_ids(), limit=100)
        self.assertLess(self.clock.seconds(), START + 25)

    def test_connection_errors_then_recovery(self):
        deliverer = self.new_deliverer()
        self.graph.script = [GraphTransportError("connection refused", body_sent=False, timed_out=False)] * 3
        runner = self.start(deliverer)
        for _ in range(3):
            self.accept()
        self.settle(runner, START + 1)
        self.assertEqual(len(self.queued_ids()), 3)
        self.settle(runner, START + 20)
        self.accept()
        self.run_until(lambda: not self.queued_ids(), limit=100)
        self.assertLess(self.clock.seconds(), START + 25)

    def test_a_message_specific_failure_keeps_its_backoff(self):
        """Only shared causes are released by a recovery; a 408 on one request is not one."""
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(408, "RequestTimeout", "slow")]
        runner = self.start(deliverer)
        first = self.accept()
        self.settle(runner, START + 1)
        self.accept()
        self.settle(runner, START + 5)
        self.assertEqual(self.queued_ids(), [first.queue_id])

    def test_at_start_up_messages_whose_last_failure_was_shared_are_due_at_once(self):
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(503, "ServiceUnavailable", "down")] * 3
        runner = self.start(deliverer)
        for _ in range(3):
            self.accept()
        self.settle(runner, START + 1)
        self.assertEqual(len(self.queued_ids()), 3)
        self.successResultOf(runner.stopService())
        self.spool.close()
        spool = self.new_spool()
        self.clock.advance(5)
        self.start(self.new_deliverer(), spool=spool)
        self.run_until(lambda: not self.queued_ids(), limit=40)
        self.assertLess(self.clock.seconds(), START + 10)

    def test_old_records_without_causes_keep_their_schedule_at_start_up(self):
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(408, "RequestTimeout", "slow")]
        runner = self.start(deliverer)
        entry = self.accept()
        self.settle(runner, START + 1)
        self.successResultOf(runner.stopService())
        self.spool.close()
        spool = self.new_spool()
        self.start(self.new_deliverer(), spool=spool)
        self.settle(runner, START + 30)
        self.assertEqual(self.queued_ids(), [entry.queue_id])


class QuietLogTests(MailboxRunnerBase):
    def test_one_line_per_state_change_with_structured_fields(self):
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(429, "ApplicationThrottled", "slow down", retry_after=3.0)]
        self.start(deliverer)
        entries = [self.accept() for _ in range(20)]
        self.run_until(lambda: not self.queued_ids())
        lines = [e for e in self.events if e.get("log_level", LogLevel.debug) >= LogLevel.info
                 and e.get("queue_id") and "received" not in formatEvent(e)]
        # 20 delivered + 1 deferred (the real 429), nothing per wait.
        self.assertEqual(len(lines), 21, [formatEvent(e) for e in lines])
        delivered = [e for e in lines if e.get("status") == "sent"]
        self.assertEqual(len(delivered), 20)
        event = delivered[-1]
        for field in ("queue_id", "from", "to", "size", "mailbox", "delay", "status", "attempt", "reason"):
            self.assertIn(field, event)
        self.assertEqual(event["from"], "alice@contoso.test")
        self.assertEqual(event["to"], ["bob@fabrikam.test"])
        self.assertEqual(event["mailbox"], "alice@contoso.test")
        deferred = [e for e in lines if e.get("status") == "deferred"]
        self.assertEqual(len(deferred), 1)
        self.assertIn("429", deferred[0]["reason"])
        self.assertEqual({e["queue_id"] for e in delivered}, {e.queue_id for e in entries})


class RecordCauseTests(SynchronousTestCase):
    def test_cause_round_trips_and_old_history_items_load(self):
        from gateway.spool.entry import AttemptRecord, SpoolEntry
        from gateway.spool.record import decode_record, encode_record
        entry = SpoolEntry("0SJ5Q4ZP1A2B3C4D5E6", Envelope("a@b.test", ("c@d.test",)), PROVENANCE, 1.0, "/x", 3,
                           attempts=2, next_attempt_at=500.0,
                           history=(AttemptRecord(10.0, "429", "throttled"), AttemptRecord(20.0, "503", "service")))
        again = decode_record(encode_record(entry), "/x")
        self.assertEqual(again.history, entry.history)
        self.assertEqual((again.failures, again.deferred_by_shared_cause, again.due_hint), (1, True, 20.0))
        old = encode_record(attrs.evolve(entry, history=(AttemptRecord(10.0, "503"),)))
        self.assertNotIn(b'"cause"', old)
        loaded = decode_record(old, "/x")
        self.assertEqual((loaded.history[0].cause, loaded.failures, loaded.due_hint), (None, 1, 500.0))


class TenantPauseTests(MailboxRunnerBase):
    def test_a_paused_tenant_costs_nothing_and_is_logged_once(self):
        deliverer = self.new_deliverer()
        config_error = [True]
        acquire = self.tokens.acquire

        def tokens(credentials):
            if config_error[0]:
                self.tokens.calls += 1
                return fail(TokenError("config", "AADSTS7000215", "Invalid client secret provided."))
            return acquire(credentials)

        self.tokens.acquire = tokens
        runner = self.start(deliverer)
        entries = [self.accept(sender) for sender in ("alice@contoso.test", "carol@contoso.test") * 10]
        self.settle(runner, START + 30)
        self.assertEqual(self.tokens.calls, 1, "messages were tried while their tenant was paused")
        self.assertEqual(len(self.prepared), 1)
        paused = [e for e in self.events if "paused" in e["log_format"] and e["log_level"] >= LogLevel.info]
        self.assertEqual(len(paused), 1, [formatEvent(e) for e in paused])
        self.assertEqual(self.record(entries[0].queue_id).failures, 0)  # a pause is not a failure
        config_error[0] = False
        self.run_until(lambda: not self.queued_ids())
        self.assertGreaterEqual(min(self.graph.started()), START + 60)
        self.assertEqual(len(self.graph.starts), 20)
        self.assertEqual(runner.stats.deferred, 1)


class GlobalBoundTests(MailboxRunnerBase):
    def test_global_concurrency_bounds_work_without_holding_slots_for_a_paused_mailbox(self):
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(429, "ApplicationThrottled", "slow down", retry_after=30.0)]
        runner = self.start(deliverer, config=attrs.evolve(self.queue_config, concurrency=3))
        self.accept("alice@contoso.test")
        self.settle(runner, START + 0.2)  # alice is paused for 30 s
        for _ in range(10):
            self.accept("alice@contoso.test")
        for sender in ("carol@contoso.test", "dave@contoso.test") * 6:
            self.accept(sender)
        most = []
        self.run_until(lambda: most.append(runner.in_flight) or len(self.graph.started()) == 13)
        self.assertEqual(max(most), 3)  # the global bound holds...
        self.assertLess(max(self.graph.started()), START + 30)  # ...and alice's pause held no slot
        self.run_until(lambda: not self.queued_ids())
        self.assertEqual(len(self.graph.starts), 24)  # 11 for alice (one twice), 12 others

    def test_admin_delete_of_an_entry_waiting_for_its_mailbox(self):
        from gateway.spool.disk import ControlRequest, SpoolDisk
        deliverer = self.new_deliverer()
        self.graph.script = [GraphResponse(429, "ApplicationThrottled", "slow down", retry_after=30.0)]
        runner = self.start(deliverer)
        self.accept()
        self.settle(runner, START + 0.2)
        waiting = self.accept()
        self.assertIn(waiting.queue_id, runner.mailboxes)
        SpoolDisk(self.directory).request_control(ControlRequest("delete", waiting.queue_id))
        runner.kick()
        self.assertNotIn(waiting.queue_id, runner.mailboxes)
        self.run_until(lambda: not self.queued_ids())
        self.assertEqual(len(self.graph.starts), 2)


class CachedTLSPolicyTests(SynchronousTestCase):
    def test_one_creator_per_host_and_port(self):
        from gateway.delivery.graph.factory import CachedTLSPolicy

        class Policy:
            calls = []

            def creatorForNetloc(self, hostname, port):
                self.calls.append((hostname, port))
                return object()

        cached = CachedTLSPolicy(Policy())
        a = cached.creatorForNetloc(b"graph.microsoft.com", 443)
        self.assertIs(cached.creatorForNetloc(b"graph.microsoft.com", 443), a)
        self.assertIsNot(cached.creatorForNetloc(b"login.microsoftonline.com", 443), a)
        self.assertEqual(Policy.calls, [(b"graph.microsoft.com", 443), (b"login.microsoftonline.com", 443)])
