"""
Per-mailbox admission (concurrency, pacing, pauses) — alone, and under a 500-message burst for
five mailboxes with one throttled, driven by a fake clock through the real GraphDeliverer.
"""

from __future__ import annotations

import heapq
import itertools
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.graph import GraphConfig
from gateway.config.secrets import Secret
from gateway.delivery.graph.client import GraphResponse
from gateway.delivery.graph.credentials import ConfigCredentialResolver, credentials_from_config
from gateway.delivery.graph.deliverer import GraphDeliverer
from gateway.delivery.graph.scheduler import Later, MailboxScheduler, Slot
from gateway.delivery.graph.token import AccessToken
from gateway.delivery.interfaces import Delivered, Permanent, Transient
from tests.graph_helpers import make_entry, simple_message, write_message


class SchedulerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.s = MailboxScheduler(self.clock, concurrency=2, rate=30, burst=1, max_hold=2.0)

    def test_concurrency_cap(self):
        s = MailboxScheduler(self.clock, concurrency=2, rate=6000, burst=10, max_hold=0.0)
        a = self.successResultOf(s.admit("m", "a"))
        b = self.successResultOf(s.admit("m", "b"))
        c = self.successResultOf(s.admit("m", "c"))
        self.assertIsInstance(a, Slot)
        self.assertIsInstance(b, Slot)
        self.assertIsInstance(c, Later)
        self.assertIsInstance(self.successResultOf(s.admit("other", "d")), Slot)
        a.release()
        self.assertIsInstance(self.successResultOf(s.admit("m", "c")), Slot)
        self.assertEqual(s.state("m").max_in_flight, 2)

    def test_pacing_holds_briefly_then_reserves_a_later_slot(self):
        first = self.successResultOf(self.s.admit("m", "a"))
        self.assertIsInstance(first, Slot)
        first.release()
        held = self.s.admit("m", "b")  # next slot is 2 s away: within max_hold, so it waits
        self.assertNoResult(held)
        later = self.successResultOf(self.s.admit("m", "c"))  # 4 s away: come back then
        self.assertIsInstance(later, Later)
        self.assertEqual(later.retry_at, 1004)
        # Another message does not take c's slot: it is booked after it.
        self.assertEqual(self.successResultOf(self.s.admit("m", "d")).retry_at, 1006)
        self.clock.advance(2)
        self.successResultOf(held).release()
        self.clock.advance(1)
        # d comes back early: it keeps its own slot instead of being booked further out.
        self.assertEqual(self.successResultOf(self.s.admit("m", "d")).retry_at, 1006)
        self.clock.advance(1)
        self.assertIsInstance(self.successResultOf(self.s.admit("m", "c")), Slot)

    def test_pause_is_per_mailbox_and_voids_reservations(self):
        self.successResultOf(self.s.admit("m", "a")).release()
        self.s.admit("m", "b")
        self.assertEqual(self.successResultOf(self.s.admit("m", "c")).retry_at, 1004)
        until = self.s.pause("m", 30, "throttled")
        self.assertEqual(until, 1030)
        self.assertEqual(self.s.state("m").reservations, {})
        later = self.successResultOf(self.s.admit("m", "c"))
        self.assertEqual((later.retry_at, later.reason), (1030, "throttled"))
        self.assertIsInstance(self.successResultOf(self.s.admit("n", "x")), Slot)
        self.clock.advance(30)
        self.assertIsInstance(self.successResultOf(self.s.admit("m", "c")), Slot)
        self.assertNoResult(self.s.admit("m", "d"))  # pacing restarts at the pause's end
        self.assertEqual(self.successResultOf(self.s.admit("m", "e")).retry_at, 1034)
        self.clock.advance(10)

    def test_throttle_without_retry_after_backs_off(self):
        self.assertEqual(self.s.pause("m", None, "429"), 1005)
        self.assertEqual(self.s.pause("m", None, "429") - 1000, 10)
        self.s.succeeded("m")
        self.clock.advance(100)
        self.assertEqual(self.s.pause("m", None, "429"), 1105)


class FakeTokens:
    def acquire(self, credentials):
        return succeed(AccessToken("token-value", 10 ** 12))

    def evict(self, credentials, token=None):
        return succeed(None)


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
    """500 messages for 5 mailboxes through a runner-like loop (16 slots, honours retry_at)."""

    def test_burst_respects_concurrency_and_pacing_and_isolates_the_throttled_mailbox(self):
        clock = Clock()
        clock.advance(10_000)
        graph = FakeGraph(clock)
        cfg = config()
        deliverer = GraphDeliverer(cfg, graph, FakeTokens(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
        mailboxes = [f"m{i}@contoso.test" for i in range(5)]
        directory = self.mktemp()
        paths = {m: write_message(directory, simple_message(sender=m, to=["r@fabrikam.test"]), f"{m}.eml") for m in mailboxes}
        entries = [make_entry(paths[m], m, ["r@fabrikam.test"], f"Q{m[1]}-{i:03d}") for i in range(100) for m in mailboxes]

        seq = itertools.count()
        due = [(clock.seconds(), next(seq), e) for e in entries]
        heapq.heapify(due)
        slots = 16
        busy = []
        done = {}
        deferrals = {"n": 0}
        max_busy = 0

        def finished(outcome, entry):
            busy.remove(entry.queue_id)
            if isinstance(outcome, Delivered):
                done[entry.queue_id] = (clock.seconds(), entry.envelope.sender)
            elif isinstance(outcome, Transient):
                deferrals["n"] += 1
                heapq.heappush(due, (outcome.retry_at if outcome.retry_at is not None else clock.seconds() + 60, next(seq), entry))
            else:
                self.fail(f"unexpected {outcome!r}")

        for _ in range(100_000):
            if len(done) == len(entries):
                break
            while due and due[0][0] <= clock.seconds() and len(busy) < slots:
                _, _, entry = heapq.heappop(due)
                busy.append(entry.queue_id)
                deliverer.deliver(entry).addCallback(finished, entry)
            max_busy = max(max_busy, len(busy))
            clock.advance(0.1)

        self.assertEqual(len(done), 500)
        self.assertEqual(deliverer.stats.delivered, 500)
        for m in mailboxes:
            starts = graph.starts[m]
            self.assertLessEqual(graph.max_in_flight[m], 2, m)
            # Pacing: 30 a minute with no burst means starts at least 2 s apart, so no 60 s
            # window ever holds more than 30.
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            self.assertGreaterEqual(min(gaps), 2.0 - 1e-6, m)
            self.assertLessEqual(max(sum(1 for t in starts if s <= t < s + 60) for s in starts), 30)
        # The throttled mailbox was left alone for the whole Retry-After...
        for at in graph.throttled_at:
            self.assertFalse([t for t in graph.starts["m2@contoso.test"] if at < t < at + 30], "started while paused")
        # ...while the others kept flowing and finished first, in about 100 × 2 s.
        finish = {m: max(t for t, s in done.values() if s == m) for m in mailboxes}
        for m in mailboxes:
            if m != "m2@contoso.test":
                self.assertLess(finish[m] - 10_000, 100 * 2 + 10)
                self.assertLess(finish[m], finish["m2@contoso.test"])
        # Nobody hogged the runner: deliveries never waited long inside deliver().
        self.assertLessEqual(max_busy, 16)
        self.assertLessEqual(len(busy), 0)


class RetryAfterTests(SynchronousTestCase):
    def test_retry_after_pauses_the_mailbox_until_then(self):
        clock = Clock()
        clock.advance(5000)
        graph = FakeGraph(clock, throttled="alice@contoso.test", throttle_times=1, retry_after=7, latency=0.0)
        cfg = config(mailbox_rate=6000, mailbox_burst=10)
        deliverer = GraphDeliverer(cfg, graph, FakeTokens(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
        path = write_message(self.mktemp(), simple_message())
        entry = make_entry(path, "alice@contoso.test", ["bob@fabrikam.test"])
        d = deliverer.deliver(entry)
        clock.advance(0)
        outcome = self.successResultOf(d)
        self.assertIsInstance(outcome, Transient)
        self.assertEqual(outcome.retry_at, 5007)
        self.assertIn("429", outcome.reason)
        clock.advance(6.5)
        early = self.successResultOf(deliverer.deliver(entry))
        self.assertEqual(early.retry_at, 5007)
        self.assertEqual(len(graph.starts["alice@contoso.test"]), 1)  # no request while paused
        clock.advance(0.5)
        d = deliverer.deliver(entry)
        clock.advance(0)
        self.assertIsInstance(self.successResultOf(d), Delivered)

    def test_unreadable_message_is_transient_and_format_errors_permanent(self):
        clock = Clock()
        cfg = config()
        deliverer = GraphDeliverer(cfg, FakeGraph(clock), FakeTokens(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
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
        deliverer = GraphDeliverer(cfg, FakeGraph(clock), FakeTokens(), ConfigCredentialResolver(credentials_from_config(cfg)), clock)
        entry = make_entry(write_message(self.mktemp(), simple_message()), "a@b.test", ["c@d.test"], credential_ref="entra:gone")
        outcome = self.successResultOf(deliverer.deliver(entry))
        self.assertEqual((type(outcome), outcome.remote_code), (Permanent, "UnknownCredentials"))
