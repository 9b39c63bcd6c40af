"""
The usual chain — the relay guard alone, answering synchronously — costs one fired Deferred
per step (issue 13): no Deferred returned from a callback (Twisted then chains the two, which
is the slow path of ``_runCallbacks``), no generator.  Verdicts are unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.chain import PolicyChain
from gateway.policy.interfaces import Continue, Reject
from gateway.testing.policy import make_message, make_session


class Guard(PolicyBase):
    def __init__(self, verdict: Any = CONTINUE) -> None:
        self.verdict = verdict

    def on_mail_from(self, session, sender):
        return self.verdict

    def on_rcpt_to(self, session, recipient):
        return self.verdict

    def on_message(self, session, message):
        return self.verdict


class GuardOnlyChainTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.made: list[Any] = []
        real = defer.Deferred.__init__

        def counting(d: Any, *a: Any, **kw: Any) -> None:
            self.made.append(d)
            real(d, *a, **kw)

        self.patch(defer.Deferred, "__init__", counting)

    def answer(self, d: Any) -> Any:
        self.assertTrue(d.called, "a synchronous chain must answer at once")
        return self.successResultOf(d)

    def test_each_envelope_step_is_one_fired_deferred(self):
        chain = PolicyChain([], guard=Guard())
        for step in (lambda: chain.on_mail_from(make_session(), "a@b.test"),
                     lambda: chain.on_rcpt_to(make_session(), "r@x.test")):
            self.made.clear()
            result = self.answer(step())
            self.assertIsInstance(result.verdict, Continue)
            self.assertEqual(len(self.made), 1, "the step built a chain of Deferreds")

    def test_message_step_is_one_fired_deferred(self):
        chain = PolicyChain([], guard=Guard())
        self.made.clear()
        result = self.answer(chain.on_message(make_session(), make_message(b"From: a@b.test\r\nTo: r@x.test\r\n\r\nbody\r\n")))
        self.assertEqual((result.verdict, result.edits), (Continue(), ()))
        self.assertEqual(len(self.made), 1, "the step built a chain of Deferreds")

    def test_refusals_are_unchanged(self):
        refusal = Reject(550, "5.7.1", "no")
        chain = PolicyChain([], guard=Guard(refusal))
        self.assertEqual(self.answer(chain.on_mail_from(make_session(), "a@b.test")).verdict, refusal)
        self.assertEqual(self.answer(chain.on_message(make_session(), make_message(b"From: a@b.test\r\nTo: r@x.test\r\n\r\nbody\r\n"))).verdict, refusal)

    def test_an_asynchronous_guard_still_works(self):
        pending = defer.Deferred()
        chain = PolicyChain([], guard=Guard(pending))
        d = chain.on_rcpt_to(make_session(), "r@x.test")
        self.assertNoResult(d)
        pending.callback(CONTINUE)
        self.assertIsInstance(self.successResultOf(d).verdict, Continue)
