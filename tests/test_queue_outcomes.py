"""
The queue's retry decisions as plain functions (gateway.queue.outcomes): backoff counts
failures not waits, a Retry-After is honoured, the last try happens when the lifetime ends, and
an attempt the deliverer did not make is rescheduled without counting.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.model import QueueConfig
from gateway.delivery.interfaces import CAUSE_SERVICE, CAUSE_THROTTLED, Permanent, Transient
from gateway.queue.outcomes import (
    EXPIRED_STATUS,
    HISTORY_LIMIT,
    duration_text,
    permanent_reason,
    plan_retry,
    unattempted_retry_at,
)
from gateway.spool.entry import AttemptRecord, Envelope, Provenance, SpoolEntry

CONFIG = QueueConfig(retry_schedule=(60.0, 300.0, 900.0), jitter=0.0, max_lifetime=3600.0)
NOW = 1_000_000.0


def entry(received_at: float = NOW - 10, history: tuple = ()) -> SpoolEntry:
    return SpoolEntry(
        queue_id="Q1", envelope=Envelope("a@corp.example", ("b@corp.example",)),
        provenance=Provenance("127.0.0.1", "localhost", "submission"), received_at=received_at,
        message_path="/nonexistent", size=10, attempts=len(history), history=history,
    )


def no_random() -> float:
    raise AssertionError("jitter drawn where no backoff step was due")


class PlanRetryTests(SynchronousTestCase):
    def test_backoff_step_follows_the_failures_so_far(self):
        first = plan_retry(entry(), Transient("down", cause=CAUSE_SERVICE), NOW, CONFIG, lambda: 0.5)
        self.assertEqual((first.next_at, first.entry.attempts, first.expired_reason), (NOW + 60, 1, None))
        self.assertEqual(first.entry.next_attempt_at, NOW + 60)
        second = plan_retry(first.entry, Transient("down"), NOW, CONFIG, lambda: 0.5)
        self.assertEqual(second.next_at, NOW + 300)

    def test_a_wait_does_not_advance_the_backoff_step(self):
        waited = plan_retry(entry(), Transient("429", cause=CAUSE_THROTTLED, pause_until=NOW + 30), NOW, CONFIG, no_random)
        self.assertEqual(waited.next_at, NOW + 30)
        after = plan_retry(waited.entry, Transient("down"), NOW, CONFIG, lambda: 0.5)
        self.assertEqual(after.next_at, NOW + 60, "the honoured 429 was not a failure")

    def test_retry_at_is_honoured_but_never_in_the_past(self):
        self.assertEqual(plan_retry(entry(), Transient("x", retry_at=NOW + 7), NOW, CONFIG, no_random).next_at, NOW + 7)
        self.assertEqual(plan_retry(entry(), Transient("x", retry_at=NOW - 7), NOW, CONFIG, no_random).next_at, NOW)

    def test_the_last_try_is_when_the_lifetime_ends(self):
        old = entry(received_at=NOW - 3600 + 20)
        self.assertEqual(plan_retry(old, Transient("down"), NOW, CONFIG, lambda: 0.5).next_at, NOW + 20)

    def test_an_expired_entry_fails_with_the_last_error(self):
        plan = plan_retry(entry(received_at=NOW - 3600), Transient("Graph 503"), NOW, CONFIG, no_random)
        self.assertEqual(plan.expired_reason, "queue lifetime of 1h expired; last error: Graph 503")
        self.assertEqual(plan.entry.attempts, 1)
        self.assertEqual(EXPIRED_STATUS, "4.4.7")

    def test_history_stays_bounded(self):
        long = tuple(AttemptRecord(at=float(i), reason="x") for i in range(HISTORY_LIMIT))
        plan = plan_retry(entry(history=long), Transient("newest"), NOW, CONFIG, lambda: 0.5)
        self.assertEqual(len(plan.entry.history), HISTORY_LIMIT)
        self.assertEqual(plan.entry.history[-1].reason, "newest")


class SmallDecisionsTests(SynchronousTestCase):
    def test_unattempted_goes_back_at_its_retry_time_or_pause_end_or_first_step(self):
        self.assertEqual(unattempted_retry_at(Transient("p", attempted=False, retry_at=NOW + 5), NOW, CONFIG), NOW + 5)
        self.assertEqual(unattempted_retry_at(Transient("p", attempted=False, pause_until=NOW + 9), NOW, CONFIG), NOW + 9)
        self.assertEqual(unattempted_retry_at(Transient("p", attempted=False), NOW, CONFIG), NOW + 60)
        self.assertEqual(unattempted_retry_at(Transient("p", attempted=False, retry_at=NOW - 5), NOW, CONFIG), NOW)

    def test_permanent_reason_keeps_the_next_hops_code(self):
        self.assertEqual(permanent_reason(Permanent("denied", "5.7.1", "ErrorSendAsDenied")),
                         "5.7.1 denied (ErrorSendAsDenied)")
        self.assertEqual(permanent_reason(Permanent("too big", "5.3.4")), "5.3.4 too big")

    def test_duration_text(self):
        self.assertEqual([duration_text(s) for s in (432000, 7200, 120, 90, 2.5)], ["5d", "2h", "2m", "90s", "2.5s"])
