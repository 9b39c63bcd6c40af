"""recipient-rules: internal-only relays, deny exceptions, scopes, and their options."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.addresses import AddressPattern
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import PolicyConfigError, Reject
from gateway.policy.recipient_rules import build
from gateway.smtp.addresses import parse_rcpt_to
from gateway.testing.policy import make_session, run_transaction


class RecipientRulesTests(SynchronousTestCase):
    def chain(self, **options):
        return PolicyChain([build(options, PolicyContext(clock=Clock()))])

    def send(self, chain, recipients, session=None):
        return self.successResultOf(run_transaction(chain, session or make_session(), "a@corp.example", recipients))

    def test_internal_only_relay_keeps_allowed_recipients_refuses_others(self):
        chain = self.chain(allow=["*@corp.example", "*@*.corp.example"])
        result = self.send(chain, ["bob@corp.example", "eve@gmail.example", "ops@eu.corp.example"])
        self.assertEqual(result.accepted_recipients, ("bob@corp.example", "ops@eu.corp.example"))
        refused = self.successResultOf(chain.on_rcpt_to(make_session(), "eve@gmail.example"))
        self.assertEqual(refused.verdict, Reject(550, "5.7.1", "Recipient address not allowed"))

    def test_deny_wins_over_allow(self):
        chain = self.chain(allow=["*@corp.example"], deny=["all-staff@corp.example"])
        result = self.send(chain, ["all-staff@corp.example", "bob@corp.example"])
        self.assertEqual(result.accepted_recipients, ("bob@corp.example",))

    def test_deny_only_allows_everything_else(self):
        chain = self.chain(deny=["*@competitor.example"])
        self.assertEqual(self.send(chain, ["x@competitor.example", "y@partner.example"]).accepted_recipients, ("y@partner.example",))

    def test_domains_are_case_insensitive(self):
        chain = self.chain(allow=["*@corp.example"])
        self.assertEqual(self.send(chain, ["Bob@CORP.EXAMPLE"]).accepted_recipients, ("Bob@CORP.EXAMPLE",))

    def test_all_refused_ends_at_rcpt_with_custom_reply(self):
        chain = self.chain(allow=["*@corp.example"], reject_text="Internal recipients only", reject_code=551)
        result = self.send(chain, ["eve@gmail.example"])
        self.assertEqual(result.step, "rcpt")
        self.assertEqual(result.result.verdict, Reject(551, "5.7.1", "Internal recipients only"))

    def test_scope_by_login_and_network(self):
        chain = self.chain(allow=["*@corp.example"], logins=["printer*@corp.example"], networks=["10.0.0.0/8"])
        outside = ["eve@gmail.example"]
        in_scope = make_session("10.1.1.1", login="printer7@corp.example")
        self.assertEqual(self.send(chain, outside, in_scope).accepted_recipients, ())
        # Other login, other network, or unauthenticated: not this policy's business.
        self.assertEqual(self.send(chain, outside, make_session("10.1.1.1", login="alice@corp.example")).accepted_recipients, tuple(outside))
        self.assertEqual(self.send(chain, outside, make_session("192.0.2.1", login="printer7@corp.example")).accepted_recipients, tuple(outside))
        self.assertEqual(self.send(chain, outside, make_session("10.1.1.1")).accepted_recipients, tuple(outside))

    def test_invalid_options_name_the_option(self):
        context = PolicyContext(clock=Clock())
        for options, option in [
            ({}, "allow"),
            ({"allow": ["corp.example"]}, "allow"),
            ({"deny": "x"}, "deny"),
            ({"allow": ["*@x.example"], "networks": ["not-a-net"]}, "networks"),
            ({"allow": ["*@x.example"], "logins": 5}, "logins"),
            ({"allow": ["*@x.example"], "reject_text": "caf\u00e9"}, "reject_text"),
            ({"allow": ["*@x.example"], "extra": 1}, "extra"),
        ]:
            e = self.assertRaises(PolicyConfigError, build, options, context)
            self.assertEqual(e.option, option, (options, str(e)))


# ``recipient-rules`` deny lists must not be stepped around with spellings that reach the
# same mailbox: a quoted local part (``"all-staff"@corp.example`` is ``all-staff@corp.example``,
# RFC 5321 §4.1.2), a trailing dot on the domain, or an Exchange Online plus-address
# (``all-staff+x@corp.example`` is delivered to ``all-staff``).
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
