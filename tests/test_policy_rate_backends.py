"""
Contract tests for L{IRateLimitBackend}: one mixin states what a token-bucket backend must do,
and every backend runs it — in memory, and Redis (a real ``redis-server`` on a unix socket, as
the rest of the Redis tests use).  Time always comes from the caller's clock.
"""

from __future__ import annotations

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from gateway.policy.rate_backends import BucketRequest, IRateLimitBackend, MemoryBuckets, RedisBuckets
from tests.test_policy_rate_redis import RedisTestBase


class RateLimitBackendContract:
    """
    What every L{IRateLimitBackend} does.  A test case using it provides ``self.clock`` (a
    L{Clock}) and ``backend()``, a fresh backend on that clock.
    """

    clock: Clock

    def request(self, key: str = "{k}:messages", capacity: float = 3, window: float = 60, cost: float = 1) -> BucketRequest:
        return BucketRequest(key, capacity=capacity, window=window, cost=cost)

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(IRateLimitBackend, self.backend()))

    @inlineCallbacks
    def test_a_full_bucket_allows_its_capacity_then_refuses_with_the_wait(self):
        backend = self.backend()
        decisions = []
        for _ in range(4):
            decisions.append((yield backend.take([self.request()])))
        self.assertEqual([d.allowed for d in decisions], [True, True, True, False])
        # One token refills every window / capacity = 20 seconds.
        self.assertAlmostEqual(decisions[-1].retry_after, 20.0, places=3)

    @inlineCallbacks
    def test_the_bucket_refills_by_the_callers_clock(self):
        backend = self.backend()
        for _ in range(3):
            yield backend.take([self.request()])
        self.assertFalse((yield backend.take([self.request()])).allowed)
        self.clock.advance(19)
        self.assertFalse((yield backend.take([self.request()])).allowed)
        self.clock.advance(1)
        self.assertTrue((yield backend.take([self.request()])).allowed)
        self.assertFalse((yield backend.take([self.request()])).allowed)

    @inlineCallbacks
    def test_taking_from_several_buckets_is_all_or_nothing(self):
        backend = self.backend()
        messages = self.request("{k}:messages", capacity=10)
        recipients = self.request("{k}:recipients", capacity=5, cost=4)
        self.assertTrue((yield backend.take([messages, recipients])).allowed)
        refused = yield backend.take([messages, recipients])  # 1 recipient token left, 4 asked
        self.assertFalse(refused.allowed)
        # The refused take charged nothing: nine message tokens are still there.
        decisions = []
        for _ in range(10):
            decisions.append((yield backend.take([messages])))
        self.assertEqual([d.allowed for d in decisions], [True] * 9 + [False])

    @inlineCallbacks
    def test_keys_are_independent(self):
        backend = self.backend()
        for _ in range(3):
            yield backend.take([self.request("{a}:m")])
        self.assertFalse((yield backend.take([self.request("{a}:m")])).allowed)
        self.assertTrue((yield backend.take([self.request("{b}:m")])).allowed)

    @inlineCallbacks
    def test_a_cost_above_capacity_is_refused_not_an_error(self):
        decision = yield self.backend().take([self.request(capacity=2, cost=3)])
        self.assertFalse(decision.allowed)
        self.assertGreater(decision.retry_after, 0)

    @inlineCallbacks
    def test_simultaneous_takes_never_overspend(self):
        backend = self.backend()
        decisions = yield gatherResults([backend.take([self.request(capacity=5, window=3600)]) for _ in range(8)])
        self.assertEqual(sum(d.allowed for d in decisions), 5)


class MemoryBucketsContractTests(RateLimitBackendContract, TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def backend(self):
        return MemoryBuckets(self.clock)


class RedisBucketsContractTests(RateLimitBackendContract, RedisTestBase):
    def backend(self):
        # A fresh prefix per backend: buckets of one test never meet another's.
        self._backends = getattr(self, "_backends", 0) + 1
        return RedisBuckets(self.connect(), self.clock, f"contract{self._backends}")
