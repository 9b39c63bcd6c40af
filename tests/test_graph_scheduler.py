"""
Per-mailbox admission: the runner's ready queues (L{MailboxQueues}: concurrency, pacing, pauses,
the global bound) alone, Graph's throttle memory (L{MailboxThrottles}), and a 500-message burst
for five mailboxes with one throttled, driven by a fake clock through a real QueueRunner and the
real GraphDeliverer.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.graph import GraphConfig
from gateway.config.model import QueueConfig
from gateway.config.secrets import Secret
from gateway.delivery.graph.client import GraphResponse
from gateway.delivery.graph.credentials import (
    ConfigCredentialResolver,
    credentials_from_config,
)
from gateway.delivery.graph.deliverer import GraphDeliverer
from gateway.delivery.graph.scheduler import MailboxThrottles
from gateway.delivery.interfaces import Delivered, Permanent, Transient
from gateway.queue.mailboxes import MailboxQueues
from gateway.queue.runner import QueueRunner
from gateway.spool.entry import Envelope, Provenance
from gateway.spool.store import DirectorySpool
from gateway.testing.delivery import FakeTokenSource
from gateway.testing.threads import SynchronousThreadPool
from tests.graph_helpers import make_entry, simple_message, write_message
from tests.test_queue_mailboxes import BoundedClock


def limits(concurrency=2, rate=30.0, burst=1):
    return lambda key: (concurrency, rate, burst)


class MailboxQueuesTests(SynchronousTestCase):
    def test_concurrency_cap_per_mailbox_and_release_wakes_the_next(self):
        q = MailboxQueues(None, limits(rate=None))
        for i in range(3):
            q.push("m", f"m{i}", 0.0)
        q.push("other", "o0", 0.0)
        self.assertEqual(sorted(q.take(0.0)), [("m", "m0"), ("m", "m1"), ("other", "o0")])
        self.assertEqual(list(q.take(0.0)), [])
        q.release("m", 1.0)
        self.assertEqual(list(q.take(1.0)), [("m", "m2")])
        self.assertEqual(q.queue("m").max_in_flight, 2)

    def test_global_bound_and_round_robin(self):
        q = MailboxQueues(3, limits(concurrency=4, rate=None))
        for i in range(4):
            q.push("a", f"a{i}", 0.0)
            q.push("b", f"b{i}", 0.0)
        self.assertEqual(list(q.take(0.0)), [("a", "a0"), ("b", "b0"), ("a", "a1")])
        q.release("a", 0.0)
        self.assertEqual(list(q.take(0.0)), [("b", "b1")])
        self.assertEqual(q.in_flight, 3)

    def test_pacing_releases_one_entry_per_token(self):
        q = MailboxQueues(None, limits(concurrency=4, rate=30.0))  # one start every 2 s
        for i in range(3):
            q.push("m", f"m{i}", 1000.0)
        self.assertEqual(list(q.take(1000.0)), [("m", "m0")])
        self.assertEqual(q.next_wake(), 1002.0)
        self.assertEqual(list(q.take(1001.9)), [])
        self.assertEqual(list(q.take(1002.0)), [("m", "m1")])
        self.assertEqual(q.next_wake(), 1004.0)

    def test_pause_is_per_mailbox_and_pacing_restarts_at_its_end(self):
        q = MailboxQueues(None, limits(concurrency=4, rate=30.0))
        for i in range(3):
            q.push("m", f"m{i}", 1000.0)
        q.push("n", "n0", 1000.0)
        q.pause("m", 1030.0, 1000.0)
        self.assertEqual(list(q.take(1000.0)), [("n", "n0")])
        self.assertEqual(q.next_wake(), 1030.0)
        self.assertEqual(list(q.take(1029.0)), [])
        self.assertEqual(list(q.take(1030.0)), [("m", "m0")])
        self.assertEqual(list(q.take(1031.0)), [])
        self.assertEqual(list(q.take(1032.0)), [("m", "m1")])

    def test_a_waiting_mailbox_costs_one_wake_not_one_per_entry(self):
        q = MailboxQueues(None, limits(concurrency=1, rate=None))
        for i in range(10_000):
            q.push("m", f"m{i}", 0.0)
        self.assertEqual(len(list(q.take(0.0))), 1)
        q.pause("m", 60.0, 0.0)
        self.assertEqual(len(q._sleeping), 0)  # full: woken by release, not by a timer
        q.release("m", 1.0)
        self.assertEqual(len(q._sleeping), 1)  # now asleep until the pause ends: one heap item
        self.assertEqual(q.next_wake(), 60.0)

    def test_discard(self):
        q = MailboxQueues(None, limits(rate=None))
        q.push("m", "a", 0.0)
        q.push("m", "b", 0.0)
        self.assertTrue(q.discard("a"))
        self.assertFalse(q.discard("a"))
        self.assertEqual(list(q.take(0.0)), [("m", "b")])


class ThrottleTests(SynchronousTestCase):
    def test_throttle_without_retry_after_backs_off_and_resets_on_success(self):
        clock = Clock()
        clock.advance(1000)
        t = MailboxThrottles(clock)
        self.assertEqual(t.pause("m", None, "429"), 1005)
        self.assertEqual(t.pause("m", None, "429") - 1000, 10)
        self.assertEqual(t.paused_until("m"), 1010)
        self.assertEqual(t.paused_until("n"), 0.0)
        t.succeeded("m")
        clock.advance(100)
        self.assertEqual(t.pause("m", None, "429"), 1105)
        self.assertEqual(t.pause("m", 30, "429"), 1130)


class FakeGraph:
    """In-memory Graph: answers after ``latency`` on the clock; one mailbox throttles."""

    def __init__(self, clock, throttled="m2@contoso.test", throttle_times=2, retry_after=30.0, latency=0.5):
        self.clock = clock
        self.throttled = throttled
        self.throttle_left = throttle_times
        self.retry_after = retry_after
        self.latency = latency
        self.in_flight = {}
        self.max_in_flight = {}
        self.starts = {}
        self.throttled_at = []

    def send_mime(self, graph_url, mailbox, token, mime):
        now = self.clock.seconds()
        self.starts.setdefault(mailbox, []).append(now)
        self.in_flight[mailbox] = self.in_flight.get(mailbox, 0) + 1
        self.max_in_flight[mailbox] = max(self.max_in_flight.get(mailbox, 0), self.in_flight[mailbox])
        if mailbox == self.throttled and self.throttle_left:
            self.throttle_left -= 1
            self.throttled_at.append(now)
            response = GraphResponse(429, "ApplicationThrottled", "over RequestRate", retry_after=self.retry_after)
        else:
            response = GraphResponse(202, request_id="r")
        d = Deferred()

        def answer():
            self.in_flight[mailbox] -= 1
            d.callback(response)

        self.clock.callLater(self.latency, answer)
        return d


def config(**kw):
    base = GraphConfig(tenant_id="t", client_id="c", authority="https://login.test/t", graph_url="https://graph.test",
                       client_secret=Secret("x"))
    import attrs
    return attrs.evolve(base, **kw)


class BurstTests(SynchronousTestCase):
    """500 messages for 5 mailboxes through a real QueueRunner (16 slots) and GraphDeliverer."""

    def test_burst_respects_concurrency_and_pacing_and_isolates_the_throttled_mailbox(self):
        clock = BoundedClock()
        clock.advance(10_000)
        graph = FakeGraph(clock)
        cfg = config()
        deliverer = GraphDeliverer(cfg, graph, FakeTokenSource(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
        mailboxes = [f"m{i}@contoso.test" for i in range(5)]
        spool = DirectorySpool(os.path.abspath(self.mktemp()), SynchronousThreadPool(), clock)
        self.addCleanup(spool.close)
        runner = QueueRunner(spool, deliverer, QueueConfig(concurrency=16, jitter=0.0), clock, random=lambda: 0.5)
        runner.startService()
        self.addCleanup(lambda: runner.running and runner.stopService())
        self.successResultOf(runner.ready)
        senders = {}
        for _i in range(100):
            for m in mailboxes:
                writer = self.successResultOf(spool.open_writer())
                writer.write(simple_message(sender=m, to=["r@fabrikam.test"]).as_bytes().replace(b"\n", b"\r\n"))
                entry = self.successResultOf(writer.commit(Envelope(m, ("r@fabrikam.test",)),
                                                           Provenance("192.0.2.1", "c.test", "default")))
                senders[entry.queue_id] = m
        for _ in range(100_000):
            if runner.stats.delivered == 500:
                break
            clock.advance(0.1)
        self.assertEqual(runner.stats.delivered, 500)
        self.assertEqual(deliverer.stats.delivered, 500)
        # Only the real 429s were deferrals: nothing was refused or retried for waiting.
        self.assertEqual(deliverer.stats.deferred, 2)
        self.assertEqual(runner.stats.started, 502)
        for m in mailboxes:
            starts = graph.starts[m]
            self.assertLessEqual(graph.max_in_flight[m], 2, m)
            # Pacing: 30 a minute with no burst means starts at least 2 s apart, so no 60 s
            # window ever holds more than 30.
            gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
            self.assertGreaterEqual(min(gaps), 2.0 - 1e-6, m)
            self.assertLessEqual(max(sum(1 for t in starts if s <= t < s + 60) for s in starts), 30)
        # The throttled mailbox was left alone for the whole Retry-After...
        for at in graph.throttled_at:
            self.assertFalse([t for t in graph.starts["m2@contoso.test"] if at < t < at + 30], "started while paused")
        # ...while the others kept flowing and finished first, in about 100 × 2 s.
        finish = {m: max(graph.starts[m]) for m in mailboxes}
        for m in mailboxes:
            if m != "m2@contoso.test":
                self.assertLess(finish[m] - 10_000, 100 * 2 + 10)
                self.assertLess(finish[m], finish["m2@contoso.test"])
        self.assertLessEqual(runner.mailboxes.in_flight, 0)


class RetryAfterTests(SynchronousTestCase):
    def test_retry_after_pauses_the_mailbox_until_then(self):
        clock = Clock()
        clock.advance(5000)
        graph = FakeGraph(clock, throttled="alice@contoso.test", throttle_times=1, retry_after=7, latency=0.0)
        cfg = config(mailbox_rate=6000, mailbox_burst=10)
        deliverer = GraphDeliverer(cfg, graph, FakeTokenSource(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
        path = write_message(self.mktemp(), simple_message())
        entry = make_entry(path, "alice@contoso.test", ["bob@fabrikam.test"])
        d = deliverer.deliver(entry)
        clock.advance(0)
        outcome = self.successResultOf(d)
        self.assertIsInstance(outcome, Transient)
        self.assertEqual((outcome.retry_at, outcome.pause_until, outcome.cause), (5007, 5007, "throttled"))
        self.assertIn("429", outcome.reason)
        clock.advance(6.5)
        early = self.successResultOf(deliverer.deliver(entry))
        self.assertEqual((early.retry_at, early.attempted), (5007, False))
        self.assertEqual(len(graph.starts["alice@contoso.test"]), 1)  # no request while paused
        clock.advance(0.5)
        d = deliverer.deliver(entry)
        clock.advance(0)
        self.assertIsInstance(self.successResultOf(d), Delivered)

    def test_unreadable_message_is_transient_and_format_errors_permanent(self):
        clock = Clock()
        cfg = config()
        deliverer = GraphDeliverer(cfg, FakeGraph(clock), FakeTokenSource(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
        missing = make_entry(write_message(self.mktemp(), simple_message()), "a@b.test", ["c@d.test"])
        os.unlink(missing.message_path)
        self.assertIsInstance(self.successResultOf(deliverer.deliver(missing)), Transient)
        nobody = make_entry(write_message(self.mktemp(), b"To: c@d.test\r\n\r\nhi\r\n"), "", ["c@d.test"])
        outcome = self.successResultOf(deliverer.deliver(nobody))
        self.assertIsInstance(outcome, Permanent)
        self.assertIn("no sending mailbox", outcome.reason)

    def test_unknown_credential_ref_is_permanent(self):
        clock = Clock()
        cfg = config()
        deliverer = GraphDeliverer(cfg, FakeGraph(clock), FakeTokenSource(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
        entry = make_entry(write_message(self.mktemp(), simple_message()), "a@b.test", ["c@d.test"], credential_ref="entra:gone")
        outcome = self.successResultOf(deliverer.deliver(entry))
        self.assertEqual((type(outcome), outcome.remote_code), (Permanent, "UnknownCredentials"))
