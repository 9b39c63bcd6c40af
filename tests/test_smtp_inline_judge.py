"""
Issue 13, less work per message: a usual header section is judged on the reactor thread (no thread hand-off per
message); a big one still goes to the judge pool (issue 8: a monstrous header never stalls the
other sessions).
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.smtp.transaction import INLINE_JUDGE_LIMIT, judge_section
from gateway.testing.harness import send_message, start_gateway
from gateway.testing.threads import ManualThreadPool

SMALL = b"From: <a@b.test>\r\nTo: <c@d.test>\r\nSubject: hi\r\n\r\n"


class InlineJudgeTests(SynchronousTestCase):
    def session(self) -> tuple:
        pool = ManualThreadPool()
        clock = Clock()
        clock.callFromThread = lambda f, *a, **kw: f(*a, **kw)
        return SimpleNamespace(judge_pool=pool, clock=clock), pool

    def test_usual_header_is_judged_without_a_thread_hop(self):
        factory, pool = self.session()
        d = judge_section(factory, SMALL)
        self.assertEqual(pool.queue, [])
        judged = self.successResultOf(d)
        self.assertIsNotNone(judged)

    def test_big_header_goes_to_the_judge_pool(self):
        factory, pool = self.session()
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 70) for i in range(INLINE_JUDGE_LIMIT // 70 + 1))
        d = judge_section(factory, SMALL[:-2] + filler + b"\r\n")
        self.assertNoResult(d)
        self.assertEqual(len(pool.queue), 1)
        pool.run_all()
        self.assertIsNotNone(self.successResultOf(d))


class GuardOnlyChainTests(TestCase):
    """With no configured policy, the message step asks only the relay guard, which reads the
    mail grammar's judgement: the email package's parse of the header is not made."""

    timeout = 30

    @inlineCallbacks
    def test_guard_only_chain_gets_no_email_parse(self):
        seen = []

        def spy(components):
            chain = components.listeners[0].factory.chain
            guard = chain.guard
            original = guard.on_message

            def on_message(session, message):
                seen.append(message)
                return original(session, message)

            guard.on_message = on_message

        gw = yield start_gateway(self, prepare=spy)
        code, _ = yield send_message(gw.port(), "app@corp.example", ["b@corp.example"],
                                     b"From: app@corp.example\r\nSubject: x\r\n\r\nbody\r\n")
        self.assertEqual(code, 250)
        self.assertEqual(len(seen), 1)
        self.assertIsNone(seen[0].headers)
        self.assertIsNotNone(seen[0].mail)  # what the guard does read
