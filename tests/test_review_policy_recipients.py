"""
Review: ``recipient-rules`` deny lists must not be stepped around with spellings that reach the
same mailbox: a quoted local part (``"all-staff"@corp.example`` is ``all-staff@corp.example``,
RFC 5321 §4.1.2), a trailing dot on the domain, or an Exchange Online plus-address
(``all-staff+x@corp.example`` is delivered to ``all-staff``).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.addresses import AddressPattern
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.recipient_rules import build
from gateway.policy.testing import make_session, run_transaction
from gateway.smtp.addresses import parse_rcpt_to


def rcpt(text: bytes) -> str:
    argument, problem = parse_rcpt_to(b"TO:<" + text + b">")
    assert problem is None, problem
    return argument.address


class EquivalentSpellingTests(SynchronousTestCase):
    def chain(self, **options):
        return PolicyChain([build(options, PolicyContext(clock=Clock()))])

    def allowed(self, chain, recipient):
        return self.successResultOf(run_transaction(chain, make_session(), "a@corp.example", [recipient])).allowed

    def test_deny_catches_quoted_trailing_dot_and_plus_spellings(self):
        chain = self.chain(deny=["all-staff@corp.example"])
        for spelling in [b'"all-staff"@corp.example', b'"all\\-staff"@corp.example', b"all-staff@corp.example.",
                         b"ALL-STAFF@Corp.Example", b"all-staff+x@corp.example"]:
            self.assertFalse(self.allowed(chain, rcpt(spelling)), spelling)
        self.assertTrue(self.allowed(chain, rcpt(b"alice@corp.example")))
        self.assertTrue(self.allowed(chain, rcpt(b"all-staffing@corp.example")))

    def test_allow_treats_equivalent_spellings_alike(self):
        chain = self.chain(allow=["*@corp.example"])
        self.assertTrue(self.allowed(chain, rcpt(b'"bob"@corp.example')))
        self.assertTrue(self.allowed(chain, rcpt(b"bob@corp.example.")))
        self.assertFalse(self.allowed(chain, rcpt(b'"bob@corp.example"@evil.example')))

    def test_quoted_pattern_semantics(self):
        exact = AddressPattern.parse("all-staff@corp.example", "deny")
        self.assertTrue(exact.matches('"all-staff"@corp.example'))
        self.assertFalse(exact.matches('"all-staff@corp.example"@evil.example'))
