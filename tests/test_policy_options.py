"""
Login names policies match (gateway.policy.options.login_names / login_patterns).

An Entra pass-through login can be spelt many ways for the same app — delimiter
``@``/``:``/``|``, GUID case or base64url, any ``.suffix`` — and the device chooses the
spelling.  Policies keyed or scoped by login used the text as typed, so a device could step
out of a ``per_login`` rule, a ``logins`` scope or a ``key = "login"`` budget just by adding a
suffix.  They now also know the login by its app (``<tenant>@<client>``).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.entra import credential_ref
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.header_rewrite import build as build_rewrite
from gateway.policy.interfaces import Identity
from gateway.policy.rate_limit import build as build_rate_limit
from gateway.policy.sender_allowlist import build as build_allowlist
from gateway.testing.policy import make_session, run_transaction

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
REF = credential_ref(TENANT, CLIENT)
SPELLINGS = [
    f"{TENANT}@{CLIENT}",
    f"{TENANT}@{CLIENT}.printer7",
    f"{TENANT.upper()}:{CLIENT}",
    f"{TENANT}|{CLIENT}.x",
]
MESSAGE = b"From: ceo@corp.example\r\nTo: t@corp.example\r\nSubject: hi\r\n\r\nbody\r\n"


def session(login):
    return make_session(identity=Identity(login=login, credential_ref=REF))


def context():
    return PolicyContext(clock=Clock())


class PassThroughLoginTests(SynchronousTestCase):
    def send(self, chain, login, sender="ceo@corp.example", raw=MESSAGE):
        return self.successResultOf(run_transaction(chain, session(login), sender, ["t@corp.example"], raw))

    def test_per_login_rule_applies_to_every_spelling(self):
        for configured in (f"{TENANT}@{CLIENT}", f"{TENANT.upper()}:{CLIENT}"):
            chain = PolicyChain([build_allowlist({"per_login": {configured: ["scanner@corp.example"]}}, context())])
            for login in SPELLINGS:
                result = self.send(chain, login)
                self.assertEqual((result.step, result.allowed), ("mail", False), (configured, login))
                self.assertTrue(self.send(chain, login, "scanner@corp.example", MESSAGE.replace(b"ceo@", b"scanner@")).allowed)

    def test_logins_scope_applies_to_every_spelling(self):
        chain = PolicyChain([build_rewrite({"logins": [f"{TENANT}@{CLIENT}"], "subject_tag": "[Dev]"}, context())])
        for login in SPELLINGS:
            result = self.send(chain, login)
            self.assertTrue(result.result.edits, login)

    def test_login_budget_is_per_app_not_per_spelling(self):
        chain = PolicyChain([build_rate_limit({"key": "login", "messages": 2, "per": "1h"}, context())])
        results = [self.send(chain, login).allowed for login in SPELLINGS]
        self.assertEqual(results, [True, True, False, False])

    def test_scoped_budget_cannot_be_escaped_with_a_suffix(self):
        chain = PolicyChain([build_rate_limit(
            {"key": "login", "messages": 1, "per": "1h", "logins": [f"{TENANT}@{CLIENT}"]}, context())])
        self.assertTrue(self.send(chain, SPELLINGS[0]).allowed)
        self.assertFalse(self.send(chain, SPELLINGS[1]).allowed)

    def test_users_file_logins_are_matched_as_before(self):
        chain = PolicyChain([build_allowlist({"per_login": {"printer@corp.example": ["scanner@corp.example"]}}, context())])
        printer = make_session(login="Printer@Corp.Example")
        self.assertFalse(self.successResultOf(run_transaction(chain, printer, "ceo@corp.example", ["t@corp.example"])).allowed)
        # A users-file login that merely looks like a pass-through name is not given an app name.
        other = make_session(login=f"{TENANT}@{CLIENT}.evil")
        limit = PolicyChain([build_rate_limit({"key": "login", "messages": 1, "per": "1h"}, context())])
        self.assertTrue(self.successResultOf(run_transaction(limit, make_session(login="a@corp.example"), "a@corp.example", ["t@corp.example"])).allowed)
        self.assertTrue(self.successResultOf(run_transaction(limit, other, "a@corp.example", ["t@corp.example"])).allowed)


class UsersFileLookalikeTests(SynchronousTestCase):
    """A users-file login spelt like a pass-through name still matches a rule written the same way."""

    def test_rule_written_as_the_login_matches_it(self):
        login = f"{TENANT.upper()}:{CLIENT}"
        chain = PolicyChain([build_allowlist({"per_login": {login: ["scanner@corp.example"]}}, context())])
        result = self.successResultOf(run_transaction(chain, make_session(login=login), "ceo@corp.example", ["t@corp.example"]))
        self.assertEqual((result.step, result.allowed), ("mail", False))
        scoped = PolicyChain([build_rewrite({"logins": [login], "subject_tag": "[Dev]"}, context())])
        result = self.successResultOf(run_transaction(scoped, make_session(login=login), "a@corp.example", ["t@corp.example"], MESSAGE))
        self.assertTrue(result.result.edits)
