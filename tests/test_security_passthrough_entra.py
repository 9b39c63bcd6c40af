"""
Entra pass-through against the delivery side's real token machinery: the adapters to
``TokenProviders``/``ICredentialResolver`` (unit), and a full SMTP login whose password is
checked by MSAL against the fake Entra over real HTTPS (integration).
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.auth.credential_store import CredentialStoreError, EncryptedCredentialStore
from gateway.auth.entra import EntraAppCredentials, InvalidAppCredentials
from gateway.auth.graph_adapter import (
    PassThroughCredentialResolver,
    TokenProvidersAcquirer,
)
from gateway.config.secrets import Secret
from gateway.delivery.graph.credentials import UnknownCredentials
from gateway.delivery.graph.token import AccessToken, TokenError, TokenProviders
from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.logs import LogCapture
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from tests.security_harness import (
    APP_SECRET,
    CLIENT,
    HOST,
    TENANT,
    TIMEOUT,
    SecureServer,
)

APP = EntraAppCredentials(TENANT, CLIENT, Secret(APP_SECRET))


class FakeProviders:
    def __init__(self, result):
        self.result = result
        self.asked = []
        self.forgotten = []

    def acquire(self, credentials):
        self.asked.append(credentials)
        return succeed(self.result) if not isinstance(self.result, Exception) else fail(self.result)

    def forget(self, credentials):
        self.forgotten.append(credentials)


class AcquirerTests(SynchronousTestCase):
    def test_token_lifetime_and_tenant_credentials(self):
        clock = Clock()
        clock.advance(1000)
        providers = FakeProviders(AccessToken("tok", expires_at=4600))
        acquirer = TokenProvidersAcquirer(providers, clock, "https://login.example", "https://graph.example")
        token = self.successResultOf(acquirer.acquire(APP))
        self.assertEqual(token.expires_in, 3600)
        [asked] = providers.asked
        self.assertEqual(asked.authority, f"https://login.example/{TENANT}")
        self.assertEqual(asked.client_secret.reveal(), APP_SECRET)
        self.assertEqual(asked.label, f"entra:{TENANT}:{CLIENT}")

    def test_config_error_is_invalid_credentials_and_forgets_app(self):
        providers = FakeProviders(TokenError("config", "AADSTS7000215", "Invalid client secret provided."))
        acquirer = TokenProvidersAcquirer(providers, Clock())
        self.failureResultOf(acquirer.acquire(APP), InvalidAppCredentials)
        self.assertEqual(len(providers.forgotten), 1)

    def test_transient_error_passes_through(self):
        providers = FakeProviders(TokenError("transient", "network", "cannot reach the login host"))
        self.failureResultOf(TokenProvidersAcquirer(providers, Clock()).acquire(APP), TokenError)
        self.assertEqual(providers.forgotten, [])


class ResolverTests(SynchronousTestCase):
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.store = EncryptedCredentialStore.open(os.path.join(directory, "c"), os.path.join(directory, "k"), ImmediateReactor(), SynchronousThreadPool())

        class Fallback:
            def resolve(self, ref):
                return succeed(("default", ref))

        self.resolver = PassThroughCredentialResolver(self.store, Fallback(), "https://login.example", "https://graph.example")

    def test_default_goes_to_fallback(self):
        self.assertEqual(self.successResultOf(self.resolver.resolve(None)), ("default", None))

    def test_stored_reference(self):
        self.successResultOf(self.store.remember(APP))
        credentials = self.successResultOf(self.resolver.resolve(APP.credential_ref))
        self.assertEqual((credentials.tenant_id, credentials.client_id), (TENANT, CLIENT))
        self.assertEqual(credentials.client_secret.reveal(), APP_SECRET)
        self.assertEqual(credentials.authority, f"https://login.example/{TENANT}")

    def test_unknown_reference_is_permanent(self):
        self.failureResultOf(self.resolver.resolve(APP.credential_ref), UnknownCredentials)

    def test_undecryptable_is_not_permanent(self):
        self.successResultOf(self.store.remember(APP))
        fresh = EncryptedCredentialStore(self.store.directory, os.urandom(32), ImmediateReactor(), SynchronousThreadPool())
        resolver = PassThroughCredentialResolver(fresh, None)
        f = self.failureResultOf(resolver.resolve(APP.credential_ref), CredentialStoreError)
        self.assertFalse(f.check(UnknownCredentials))


class FakeEntraLoginTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.entra = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()), tenant_id=TENANT, client_id=CLIENT, client_secret=APP_SECRET)
        self.addCleanup(self.entra.stop)
        pool = ThreadPool(1, 1, "test-msal")
        pool.start()
        self.addCleanup(pool.stop)
        sessions = []

        def app_factory(client_id, **kwargs):
            # Our own HTTP session: closed before the fake stops (no keep-alive left behind),
            # and trust_env off because requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override
            # the session's verify= that MSAL would set (requests issue #3829).
            import msal
            import requests
            session = requests.Session()
            session.verify = self.entra.ca_path
            session.trust_env = False
            sessions.append(session)
            kwargs.pop("verify", None)
            kwargs.pop("proxies", None)
            return msal.ConfidentialClientApplication(client_id, http_client=session, **kwargs)

        self.addCleanup(lambda: [s.close() for s in sessions])
        providers = TokenProviders(reactor, pool, timeout=10, app_factory=app_factory)
        acquirer = TokenProvidersAcquirer(providers, reactor, self.entra.base, self.entra.graph_url)
        self.server = yield SecureServer.start(self, passthrough=True, token_acquirer=acquirer)

    @inlineCallbacks
    def test_login_checked_by_msal_against_fake_entra(self):
        logs = LogCapture.install(self)
        ctx = self.server.client_context()
        login = f"{TENANT}@{CLIENT}.printer"

        def client():
            with smtplib.SMTP(HOST, self.server.port, timeout=TIMEOUT) as s:
                s.starttls(context=ctx)
                s.ehlo("printer.test")
                wrong = s.docmd("AUTH", "PLAIN " + __import__("base64").b64encode(f"\0{login}\0wrong-secret".encode()).decode())
                s.login(login, APP_SECRET)
                s.sendmail("printer@corp.example", ["bob@elsewhere.example"], "Subject: x\r\n\r\nhi\r\n")
            with smtplib.SMTP(HOST, self.server.port, timeout=TIMEOUT) as s:
                s.starttls(context=ctx)
                s.login(login, APP_SECRET)
            return wrong

        wrong = yield deferToThread(client)
        self.assertEqual(wrong[0], 535)
        [(entry, _)] = self.server.spool.messages
        self.assertEqual(entry.provenance.credential_ref, f"entra:{TENANT}:{CLIENT}")
        # one token for the right secret (the second login used the cache), one refusal
        self.assertEqual(self.entra.token_requests, 2)
        self.assertEqual(self.entra.token_methods, ["secret"])
        yield self.server.sessions_closed()
        logs.assert_absent(self, APP_SECRET, "wrong-secret")
