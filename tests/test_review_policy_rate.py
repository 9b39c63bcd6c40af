"""
Review: ``rate-limit`` with ``key = "mailbox"`` must count the mailbox Graph really sends
through.  With several From addresses Graph sends as the Sender (gateway.delivery.graph.mime.
choose_mailbox); counting the first From let a client rotate it and send without limit through
one mailbox.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.mime import HeaderSection, choose_mailbox, split_fields
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import TempFail
from gateway.policy.rate_limit import build
from gateway.policy.testing import make_session, run_transaction


def headers(from_, sender=None):
    text = f"From: {from_}\r\n" + (f"Sender: {sender}\r\n" if sender else "") + "To: t@corp.example\r\n"
    return text.encode()


class MailboxKeyTests(SynchronousTestCase):
    def setUp(self):
        self.chain = PolicyChain([build({"key": "mailbox", "messages": 1, "per": "1h"}, PolicyContext(clock=Clock()))])

    def send(self, raw):
        return self.successResultOf(run_transaction(
            self.chain, make_session(login="app"), "bounce@corp.example", ["t@corp.example"], raw + b"\r\nbody\r\n",
        ))

    def graph_mailbox(self, raw):
        section = HeaderSection(tuple(split_fields(raw)), len(raw), len(raw))
        return choose_mailbox(section, "bounce@corp.example", "header-from")

    def test_several_from_addresses_count_against_the_sender_mailbox(self):
        first = headers("a@corp.example, b@corp.example", "shared@corp.example")
        second = headers("c@corp.example, d@corp.example", "shared@corp.example")
        self.assertEqual(self.graph_mailbox(first), self.graph_mailbox(second))  # one mailbox sends both
        self.assertTrue(self.send(first).allowed)
        refused = self.send(second)
        self.assertEqual(refused.step, "message")
        self.assertIsInstance(refused.result.verdict, TempFail)

    def test_single_from_is_still_the_mailbox(self):
        self.assertTrue(self.send(headers("a@corp.example", "shared@corp.example")).allowed)
        self.assertTrue(self.send(headers("b@corp.example", "shared@corp.example")).allowed)
        self.assertFalse(self.send(headers("A@corp.example")).allowed)


class SpellingTests(SynchronousTestCase):
    """Spellings of one mailbox that address patterns treat alike must share one budget."""

    def test_sender_key_counts_equivalent_spellings_together(self):
        chain = PolicyChain([build({"key": "sender", "messages": 1, "per": "1h"}, PolicyContext(clock=Clock()))])
        first = self.successResultOf(run_transaction(chain, make_session(), "a@corp.example", ["t@corp.example"]))
        self.assertTrue(first.allowed)
        for spelling in ('"a"@corp.example', "A@corp.example.", '"\\a"@Corp.Example'):
            result = self.successResultOf(run_transaction(chain, make_session(), spelling, ["t@corp.example"]))
            self.assertFalse(result.allowed, spelling)
