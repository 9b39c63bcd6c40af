"""
A login's canonical names are computed once, by the auth checker that accepted it, and carried
by the identity; policies read them and never parse a login (issue 11: policy no longer imports
auth to re-parse pass-through names).
"""

from __future__ import annotations

from twisted.cred.credentials import UsernamePassword
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.checkers import UsersFileChecker
from gateway.auth.passthrough import PassThroughChecker
from gateway.config.logins import login_names, login_patterns, names_of, parse_passthrough_name
from gateway.config.users import UsersStore
from gateway.policy.interfaces import Identity
from gateway.policy.options import PolicyOptions
from gateway.policy.options import login_names as policy_login_names
from gateway.testing.policy import make_session
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.auth_helpers import (
    FakeTokenAcquirer,
    RecordingStore,
    cheap_hash,
    make_users_file,
)

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0b5e4f0a-9d8e-4c0b-8a39-6f7a2d9e1c11"
APP = f"{TENANT}@{CLIENT}"
SECRET = "Q~fake.client.secret-value_0123456789"


class CanonicalNamesTests(SynchronousTestCase):
    def test_pass_through_login_is_known_by_its_app_with_and_without_suffix(self):
        login = f"{TENANT.upper()}:{CLIENT}.Printer7"
        self.assertEqual(login_names(login, passthrough=True), (login.lower(), f"{APP}.printer7", APP))

    def test_users_file_login_that_looks_like_a_pass_through_name_gets_no_app_name(self):
        self.assertEqual(login_names(f"{APP}.evil", passthrough=False), (f"{APP}.evil",))

    def test_names_of_uses_the_name_the_checker_parsed(self):
        name = parse_passthrough_name(f"{TENANT}|{CLIENT}", ("|",))
        self.assertEqual(names_of(f"{TENANT}|{CLIENT}", name), (f"{TENANT}|{CLIENT}", APP))

    def test_configured_login_patterns_meet_the_names(self):
        self.assertEqual(login_patterns(f" {TENANT.upper()}:{CLIENT} "), (f"{TENANT}:{CLIENT}", APP))
        self.assertEqual(login_patterns("Scanner*"), ("scanner*",))


class CheckersComputeNamesTests(SynchronousTestCase):
    def test_pass_through_checker_puts_the_names_on_the_identity(self):
        checker = PassThroughChecker(FakeTokenAcquirer({(TENANT, CLIENT): SECRET}, expires_in=3600), RecordingStore(),
                                     Clock(), allowed_tenants=[TENANT])
        login = f"{TENANT.upper()}:{CLIENT}.Printer"
        identity = self.successResultOf(checker.requestAvatarId(UsernamePassword(login.encode(), SECRET.encode())))
        self.assertEqual(identity.names, (login.lower(), f"{APP}.printer", APP))

    def test_users_file_checker_puts_the_login_as_its_only_name(self):
        path = make_users_file(self.mktemp(), {"Scanner": ("s3cret", ["scanner@corp.example"])})
        checker = UsersFileChecker(UsersStore(path), ImmediateReactor(), SynchronousThreadPool(), dummy_hash=cheap_hash("d").encode())
        identity = self.successResultOf(checker.requestAvatarId(UsernamePassword(b"Scanner", b"s3cret")))
        self.assertEqual(identity.names, ("scanner",))


class PoliciesReadTheNamesTests(SynchronousTestCase):
    def test_policies_use_the_identity_names_and_do_not_reparse_the_login(self):
        # Names given by a checker win over what the login text would parse to.
        identity = Identity(login=f"{APP}.printer", credential_ref="entra:x", names=("chosen-by-checker",))
        self.assertEqual(policy_login_names(identity), ("chosen-by-checker",))
        scope = PolicyOptions({"logins": ["chosen-by-checker"]}).scope()
        self.assertTrue(scope.applies(make_session(identity=identity)))
        by_app = PolicyOptions({"logins": [APP]}).scope()
        self.assertFalse(by_app.applies(make_session(identity=identity)))

    def test_an_identity_built_by_hand_derives_the_same_names(self):
        self.assertEqual(Identity(login=f"{APP}.x", credential_ref="entra:x").names, (f"{APP}.x", APP))
        self.assertEqual(Identity(login="Alice").names, ("alice",))
