"""
Issue 13: a usual header section is judged on the reactor thread (no thread hand-off per
message); a big one still goes to the judge pool (issue 8: a monstrous header never stalls the
other sessions).
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.protocol import INLINE_JUDGE_LIMIT, GatewayESMTP
from gateway.spool.testing import ManualThreadPool

SMALL = b"From: <a@b.test>\r\nTo: <c@d.test>\r\nSubject: hi\r\n\r\n"


class InlineJudgeTests(SynchronousTestCase):
    def session(self) -> tuple:
        pool = ManualThreadPool()
        clock = Clock()
        clock.callFromThread = lambda f, *a, **kw: f(*a, **kw)
        return SimpleNamespace(factory=SimpleNamespace(judge_pool=pool, clock=clock)), pool

    def test_usual_header_is_judged_without_a_thread_hop(self):
        session, pool = self.session()
        d = GatewayESMTP._judge(session, SMALL)
        self.assertEqual(pool.queue, [])
        judged = self.successResultOf(d)
        self.assertIsNotNone(judged)

    def test_big_header_goes_to_the_judge_pool(self):
        session, pool = self.session()
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 70) for i in range(INLINE_JUDGE_LIMIT // 70 + 1))
        d = GatewayESMTP._judge(session, SMALL[:-2] + filler + b"\r\n")
        self.assertNoResult(d)
        self.assertEqual(len(pool.queue), 1)
        pool.run_all()
        self.assertIsNotNone(self.successResultOf(d))
