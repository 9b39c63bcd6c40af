"""
Entra pass-through AUTH: user name syntax, token-backed checking with a per-credential cache,
and the encrypted credential store that keeps spooled pass-through mail deliverable.
"""

from __future__ import annotations

import base64
import os
import uuid

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.credential_store import (
    CredentialStoreError,
    EncryptedCredentialStore,
    load_or_create_key,
)
from gateway.auth.entra import EntraAppCredentials, credential_ref, parse_credential_ref
from gateway.auth.passthrough import (
    DispatchingChecker,
    PassThroughChecker,
    TemporaryAuthFailure,
    parse_passthrough_name,
)
from gateway.config.errors import ConfigError
from gateway.config.secrets import Secret
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.auth_helpers import (
    FakeTokenAcquirer,
    RecordingStore,
)

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0b5e4f0a-9d8e-4c0b-8a39-6f7a2d9e1c11"
SECRET = "Q~fake.client.secret-value_0123456789"


def b64(guid: str) -> str:
    return base64.urlsafe_b64encode(uuid.UUID(guid).bytes).decode().rstrip("=")


class NameSyntaxTests(SynchronousTestCase):
    def test_forms(self):
        for name in (
            f"{TENANT}@{CLIENT}", f"{TENANT}:{CLIENT}", f"{TENANT}|{CLIENT}",
            f"{TENANT.upper()}@{CLIENT}", f"{b64(TENANT)}@{b64(CLIENT)}", f"{b64(TENANT)}|{CLIENT}.printer-3rd-floor",
            f"{TENANT}@{CLIENT}.x",
        ):
            parsed = parse_passthrough_name(name)
            self.assertIsNotNone(parsed, name)
            self.assertEqual((parsed.tenant_id, parsed.client_id), (TENANT, CLIENT), name)

    def test_suffix_kept_for_logs(self):
        self.assertEqual(parse_passthrough_name(f"{TENANT}@{CLIENT}.scanner1").suffix, "scanner1")

    def test_not_pass_through(self):
        for name in (
            "alice", "alice@corp.example", f"{TENANT}@{CLIENT}@{CLIENT}", f"{TENANT}@{CLIENT}:{CLIENT}",
            f"{TENANT}{CLIENT}", f"{TENANT}@", f"{TENANT}@{CLIENT[:-1]}", f"{TENANT}@{CLIENT}.",
            f"{TENANT}@{CLIENT}.a b", f"{b64(TENANT)[:-1]}@{CLIENT}", f"{TENANT}#{CLIENT}",
        ):
            self.assertIsNone(parse_passthrough_name(name), name)

    def test_delimiters_configurable(self):
        self.assertIsNone(parse_passthrough_name(f"{TENANT}@{CLIENT}", delimiters=("|",)))
        self.assertIsNotNone(parse_passthrough_name(f"{TENANT}|{CLIENT}", delimiters=("|",)))

    def test_credential_ref(self):
        self.assertEqual(parse_credential_ref(credential_ref(TENANT, CLIENT)), (TENANT, CLIENT))
        self.assertIsNone(parse_credential_ref("entra:../../etc:passwd"))


class PassThroughCheckerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.entra = FakeTokenAcquirer({(TENANT, CLIENT): SECRET}, expires_in=3600)
        self.store = RecordingStore()
        self.checker = PassThroughChecker(self.entra, self.store, self.clock, allowed_tenants=[TENANT])

    def check(self, user=f"{TENANT}@{CLIENT}.printer", password=SECRET):
        return self.checker.requestAvatarId(UsernamePassword(user.encode(), password.encode()))

    def test_success_gives_identity_with_credential_ref_and_stores_secret(self):
        identity = self.successResultOf(self.check())
        self.assertEqual(identity.login, f"{TENANT}@{CLIENT}.printer")
        self.assertEqual(identity.credential_ref, f"entra:{TENANT}:{CLIENT}")
        self.assertEqual(identity.allowed_senders, ())
        self.assertEqual([c.client_secret.reveal() for c in self.store.remembered], [SECRET])

    def test_wrong_secret_is_unauthorized(self):
        self.failureResultOf(self.check(password="wrong"), UnauthorizedLogin)
        self.assertEqual(self.store.remembered, [])

    def test_token_endpoint_down_is_temporary_not_unauthorized(self):
        self.entra.down = True
        self.failureResultOf(self.check(), TemporaryAuthFailure)
        self.flushLoggedErrors(ConnectionRefusedError)

    def test_cached_for_token_lifetime_then_checked_again(self):
        self.successResultOf(self.check())
        self.successResultOf(self.check(user=f"{b64(TENANT)}:{CLIENT}"))
        self.assertEqual(len(self.entra.calls), 1)
        # a different secret for the same app is not served from the cache
        self.failureResultOf(self.check(password=SECRET + "x"), UnauthorizedLogin)
        self.assertEqual(len(self.entra.calls), 2)
        self.clock.advance(3600)
        self.successResultOf(self.check())
        self.assertEqual(len(self.entra.calls), 3)

    def test_concurrent_logins_share_one_token_request(self):
        self.entra.hold = True
        first, second = self.check(), self.check()
        self.assertNoResult(first)
        self.assertEqual(len(self.entra.calls), 1)
        self.entra.release()
        self.assertEqual(self.successResultOf(first).credential_ref, self.successResultOf(second).credential_ref)

    def test_tenant_not_allowed(self):
        other = str(uuid.uuid4())
        self.entra.apps[(other, CLIENT)] = SECRET
        self.failureResultOf(self.check(user=f"{other}@{CLIENT}"), UnauthorizedLogin)
        self.assertEqual(self.entra.calls, [])
        anyone = PassThroughChecker(self.entra, self.store, self.clock, allowed_tenants=["*"])
        self.successResultOf(anyone.requestAvatarId(UsernamePassword(f"{other}@{CLIENT}".encode(), SECRET.encode())))

    def test_empty_password_or_non_pass_through_name(self):
        self.failureResultOf(self.check(password=""), UnauthorizedLogin)
        self.failureResultOf(self.check(user="alice"), UnauthorizedLogin)
        self.assertEqual(self.entra.calls, [])

    def test_store_failure_fails_login(self):
        checker = PassThroughChecker(self.entra, RecordingStore(fail_with=OSError("disk full")), self.clock, allowed_tenants=[TENANT])
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(f"{TENANT}@{CLIENT}".encode(), SECRET.encode())), OSError)

    def test_secret_not_in_cache_keys_or_reprs(self):
        self.successResultOf(self.check())
        for key in self.checker._cache:
            self.assertNotIn(SECRET.encode(), key)
        self.assertNotIn(SECRET, repr(self.store.remembered))


class DispatchTests(SynchronousTestCase):
    def test_routes_by_syntax(self):
        class Users:
            def __init__(self):
                self.seen = []

            def requestAvatarId(self, credentials):
                from twisted.internet.defer import succeed
                self.seen.append(credentials.username)
                return succeed("users")

        users = Users()
        entra = FakeTokenAcquirer({(TENANT, CLIENT): SECRET})
        passthrough = PassThroughChecker(entra, RecordingStore(), Clock(), allowed_tenants=[TENANT])
        checker = DispatchingChecker(passthrough, users)
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"alice", b"pw")))
        self.successResultOf(checker.requestAvatarId(UsernamePassword(f"{TENANT}@{CLIENT}".encode(), SECRET.encode())))
        self.assertEqual(users.seen, [b"alice"])
        self.assertEqual(len(entra.calls), 1)
        self.failureResultOf(DispatchingChecker(None, None).requestAvatarId(UsernamePassword(b"a", b"b")), UnauthorizedLogin)


class CredentialStoreTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.key_file = os.path.join(self.dir, "store.key")
        self.store_dir = os.path.join(self.dir, "credentials")
        self.app = EntraAppCredentials(TENANT, CLIENT, Secret(SECRET))

    def open(self):
        return EncryptedCredentialStore.open(self.store_dir, self.key_file, ImmediateReactor(), SynchronousThreadPool())

    def test_key_created_private_on_first_use(self):
        self.open()
        self.assertEqual(os.stat(self.key_file).st_mode & 0o777, 0o600)
        key = open(self.key_file, "rb").read()
        self.open()
        self.assertEqual(open(self.key_file, "rb").read(), key)

    def test_survives_restart_without_plaintext_on_disk(self):
        self.successResultOf(self.open().remember(self.app))
        for name in os.listdir(self.store_dir):
            path = os.path.join(self.store_dir, name)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            self.assertNotIn(SECRET.encode(), open(path, "rb").read())
        # a new process: only the key file and the store directory
        restored = self.successResultOf(self.open().resolve(self.app.credential_ref))
        self.assertEqual((restored.tenant_id, restored.client_id, restored.client_secret.reveal()), (TENANT, CLIENT, SECRET))

    def test_rotated_secret_replaces_old(self):
        store = self.open()
        self.successResultOf(store.remember(self.app))
        self.successResultOf(store.remember(EntraAppCredentials(TENANT, CLIENT, Secret("new-secret"))))
        self.assertEqual(self.successResultOf(self.open().resolve(self.app.credential_ref)).client_secret.reveal(), "new-secret")

    def test_unchanged_secret_not_rewritten(self):
        pool = SynchronousThreadPool()
        store = EncryptedCredentialStore.open(self.store_dir, self.key_file, ImmediateReactor(), pool)
        self.successResultOf(store.remember(self.app))
        self.successResultOf(store.remember(self.app))
        self.assertEqual(pool.jobs, 1)

    def test_unknown_ref(self):
        self.failureResultOf(self.open().resolve(credential_ref(TENANT, str(uuid.uuid4()))), KeyError)
        self.failureResultOf(self.open().resolve("entra:nonsense"), KeyError)

    def test_wrong_key_or_swapped_file_does_not_decrypt(self):
        self.successResultOf(self.open().remember(self.app))
        other_client = str(uuid.uuid4())
        # a file renamed to stand for another app fails authentication (ref is associated data)
        os.rename(os.path.join(self.store_dir, f"{TENANT}_{CLIENT}.cred"), os.path.join(self.store_dir, f"{TENANT}_{other_client}.cred"))
        f = self.failureResultOf(self.open().resolve(credential_ref(TENANT, other_client)), CredentialStoreError)
        self.assertNotIn(SECRET, str(f.value))
        os.rename(os.path.join(self.store_dir, f"{TENANT}_{other_client}.cred"), os.path.join(self.store_dir, f"{TENANT}_{CLIENT}.cred"))
        os.unlink(self.key_file)
        self.failureResultOf(self.open().resolve(self.app.credential_ref), CredentialStoreError)

    def test_readable_key_file_refused(self):
        self.open()
        os.chmod(self.key_file, 0o640)
        e = self.assertRaises(ConfigError, self.open)
        self.assertIn(self.key_file, str(e))
        self.assertEqual(e.key, "auth.passthrough.key_file")

    def test_malformed_key_file_refused(self):
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"short\n")
        os.close(fd)
        e = self.assertRaises(ConfigError, load_or_create_key, self.key_file, "auth.passthrough.key_file")
        self.assertIn(self.key_file, str(e))
