"""
Token providers: single flight, caching, eviction and error classification with a fake MSAL
application (unit); and real MSAL against the fake Entra over HTTPS with a client secret, a
certificate (with and without x5c) and a federated assertion file (integration).
"""

from __future__ import annotations

import json
import os

import requests
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config.graph import CertificateConfig
from gateway.config.secrets import Secret
from gateway.delivery.graph.credentials import TenantCredentials
from gateway.delivery.graph.token import (
    AccessToken,
    TokenError,
    TokenProviders,
    classify_exception,
    classify_result,
    msal_credential,
)
from gateway.delivery.interfaces import Transient
from gateway.testing.fake_graph import (
    Fault,
    create_client_certificate,
    start_fake_graph,
)
from gateway.testing.logs import LogCapture
from gateway.testing.threads import ImmediateReactor, ManualThreadPool
from tests.graph_helpers import simple_message, start_rig

SECRET = "client-secret-value-xyz"


class FakeApp:
    def __init__(self, results):
        self.results = list(results)
        self.calls = 0
        self.evictions = 0

    def acquire_token_for_client(self, scopes):
        self.calls += 1
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def remove_tokens_for_client(self):
        self.evictions += 1


def creds(**kw):
    values = dict(tenant_id="t", client_id="c", authority="https://login.test/t", graph_url="https://graph.test",
                  client_secret=Secret(SECRET))
    values.update(kw)
    return TenantCredentials(**values)


class UnitTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = ImmediateReactor()
        self.reactor.advance(1000)
        self.pool = ManualThreadPool()
        self.built = []

    def providers(self, *results):
        app = FakeApp(results)

        def factory(client_id, **kwargs):
            self.built.append(kwargs)
            return app
        return TokenProviders(self.reactor, self.pool, timeout=5, app_factory=factory), app

    def test_single_flight_and_cached_until_near_expiry(self):
        providers, app = self.providers({"access_token": "AT1", "expires_in": 3600, "token_source": "identity_provider"})
        a = providers.acquire(creds())
        b = providers.acquire(creds())
        self.pool.run_all()
        token = self.successResultOf(a)
        self.assertIs(self.successResultOf(b), token)
        self.assertEqual((app.calls, token.reveal(), token.expires_at), (1, "AT1", 4600))
        self.assertIs(self.successResultOf(providers.acquire(creds())), token)  # no thread hop at all
        self.assertEqual(self.pool.queue, [])
        self.reactor.advance(3600 - 299)  # inside the 5-minute margin: ask MSAL again
        d = providers.acquire(creds())
        self.pool.run_all()
        self.successResultOf(d)
        self.assertEqual(app.calls, 2)
        kwargs = self.built[0]
        self.assertEqual((kwargs["instance_discovery"], kwargs["azure_region"], kwargs["timeout"]), (False, False, 5))

    def test_evict_forgets_token_here_and_in_msal(self):
        providers, app = self.providers({"access_token": "AT1", "expires_in": 3600})
        d = providers.acquire(creds())
        self.pool.run_all()
        token = self.successResultOf(d)
        stale = AccessToken("older", 0)
        self.successResultOf(providers.evict(creds(), stale))  # not the current one: no-op
        self.assertEqual(app.evictions, 0)
        e = providers.evict(creds(), token)
        self.pool.run_all()
        self.successResultOf(e)
        self.assertEqual(app.evictions, 1)
        d = providers.acquire(creds())
        self.pool.run_all()
        self.successResultOf(d)
        self.assertEqual(app.calls, 2)

    def test_errors_reach_every_waiter_and_are_classified(self):
        providers, app = self.providers({"error": "invalid_client", "error_codes": [7000215],
                                         "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"})
        a, b = providers.acquire(creds()), providers.acquire(creds())
        self.pool.run_all()
        for d in (a, b):
            error = self.failureResultOf(d, TokenError).value
            self.assertEqual((error.kind, error.code), ("config", "AADSTS7000215"))
            self.assertNotIn("Trace ID", error.description)

    def test_classification_table(self):
        self.assertEqual(classify_result({"error": "temporarily_unavailable"}).kind, "transient")
        self.assertEqual(classify_result({"error": "unauthorized_client", "error_codes": [700016]}).kind, "config")
        self.assertEqual(classify_result({"error": "invalid_request", "error_codes": [90002]}).code, "AADSTS90002")
        self.assertEqual(classify_exception(requests.exceptions.ConnectionError("refused")).kind, "transient")
        self.assertEqual(classify_exception(requests.exceptions.ReadTimeout("slow")).kind, "transient")
        self.assertEqual(classify_exception(requests.exceptions.SSLError("bad cert")).kind, "config")
        self.assertEqual(classify_exception(ValueError("Unable to get authority configuration for x")).code, "authority")
        self.assertEqual(classify_exception(ValueError("Could not deserialize key data")).kind, "config")

    def test_token_and_error_text_never_show_secrets(self):
        token = AccessToken("eyJ-secret-token", 5.0)
        self.assertNotIn("eyJ", repr(token) + str(token))
        self.assertNotIn(SECRET, repr(creds()))

    def test_msal_credential_shapes(self):
        self.assertEqual(msal_credential(creds()), SECRET)
        cert = CertificateConfig("PEMCERT", Secret("PEMKEY"), "ABCD", Secret("pw"), send_x5c=False)
        value = msal_credential(creds(client_secret=None, certificate=cert))
        self.assertEqual(value, {"private_key": "PEMKEY", "thumbprint": "ABCD", "passphrase": "pw"})
        value = msal_credential(creds(client_secret=None, certificate=CertificateConfig("PEMCERT", Secret("K"), "AB", send_x5c=True)))
        self.assertEqual(value["public_certificate"], "PEMCERT")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("first\n")
        value = msal_credential(creds(client_secret=None, client_assertion_file=path))
        self.assertEqual(value["client_assertion"](), "first")
        with open(path, "w") as f:
            f.write("rotated\n")
        self.assertEqual(value["client_assertion"](), "rotated")

    def test_changed_secret_gets_its_own_application(self):
        self.assertNotEqual(creds().key, creds(client_secret=Secret("other")).key)
        self.assertEqual(creds().tenant_key, creds(client_secret=Secret("other")).tenant_key)


class FakeEntraTests(TestCase):
    """Real MSAL in a real thread pool against the fake Entra over HTTPS."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.server = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()), client_secret=SECRET)
        self.addCleanup(self.server.stop)
        self.pool = ThreadPool(1, 1, "test-msal")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def providers(self):
        providers = TokenProviders(reactor, self.pool, verify=self.server.ca_path, timeout=5)
        self.addCleanup(providers.close)
        return providers

    def credentials(self, **kw):
        values = dict(tenant_id=self.server.tenant_id, client_id=self.server.client_id, authority=self.server.authority,
                      graph_url=self.server.graph_url, client_secret=Secret(SECRET))
        values.update(kw)
        return TenantCredentials(**values)

    @inlineCallbacks
    def test_client_secret(self):
        providers = self.providers()
        token = yield providers.acquire(self.credentials())
        again = yield providers.acquire(self.credentials())
        self.assertIs(token, again)
        self.assertEqual((self.server.token_requests, self.server.token_methods), (1, ["secret"]))
        yield providers.evict(self.credentials(), token)
        fresh = yield providers.acquire(self.credentials())
        self.assertNotEqual(fresh.reveal(), token.reveal())
        self.assertEqual(self.server.token_requests, 2)

    @inlineCallbacks
    def test_certificate_with_and_without_x5c(self):
        cert = create_client_certificate(self.mktemp())
        self.server.register_certificate(cert.cert_pem)
        with open(cert.key_path) as f:
            key = Secret(f.read())
        providers = self.providers()
        plain = CertificateConfig(cert.cert_pem.decode(), key, cert.thumbprint, send_x5c=False)
        yield providers.acquire(self.credentials(client_secret=None, certificate=plain))
        self.assertEqual(self.server.token_methods, ["certificate"])
        self.assertFalse(self.server.x5c_seen)
        with_x5c = CertificateConfig(cert.cert_pem.decode(), key, cert.thumbprint, send_x5c=True)
        yield providers.acquire(self.credentials(client_secret=None, certificate=with_x5c))
        self.assertTrue(self.server.x5c_seen)

    @inlineCallbacks
    def test_federated_assertion_file_is_reread(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(self.server.federated_assertion(valid=False))
        providers = self.providers()
        credentials = self.credentials(client_secret=None, client_assertion_file=path)
        error = yield self.assertFailure(providers.acquire(credentials), TokenError)
        self.assertEqual(error.kind, "config")
        with open(path, "w") as f:  # the workload identity agent rotated the token
            f.write(self.server.federated_assertion())
        token = yield providers.acquire(credentials)
        self.assertTrue(token.reveal())
        self.assertEqual(self.server.token_methods, ["federated"])

    @inlineCallbacks
    def test_wrong_secret_and_unknown_tenant_are_config_errors(self):
        providers = self.providers()
        error = yield self.assertFailure(providers.acquire(self.credentials(client_secret=Secret("wrong"))), TokenError)
        self.assertEqual((error.kind, error.code), ("config", "AADSTS7000215"))
        error = yield self.assertFailure(providers.acquire(self.credentials(
            tenant_id="nope", authority=f"{self.server.base}/nope")), TokenError)
        self.assertEqual((error.kind, error.code), ("config", "authority"))

    @inlineCallbacks
    def test_token_endpoint_down_is_transient(self):
        self.server.inject(Fault.status_code(503, "temporarily_unavailable"), operation="token", times=None)
        error = yield self.assertFailure(self.providers().acquire(self.credentials()), TokenError)
        self.assertEqual(error.kind, "transient")

    @inlineCallbacks
    def test_unreachable_login_host_is_transient(self):
        yield self.server.stop()
        error = yield self.assertFailure(self.providers().acquire(self.credentials()), TokenError)
        self.assertEqual((error.kind, error.code), ("transient", "network"))


# token endpoint answers that are not JSON (an HTML 429 from a front door or proxy, a
# truncated body) are network trouble, not a configuration error: the tenant must not be paused
# as "config-error" and the reason must not blame the credential.
class ClassifyTests(TestCase):
    def test_json_decode_error_is_transient(self):
        try:
            json.loads("<html>Too Many Requests</html>")
        except ValueError as e:
            error = classify_exception(e)
        self.assertEqual(error.kind, "transient")


class TokenEndpointHtmlTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_html_429_from_the_token_endpoint_is_transient(self):
        r = yield start_rig(self, reactor)
        r.server.inject(Fault(action="raw", status=429, body=b"<html>Too Many Requests</html>"),
                        operation="token", times=None)
        outcome = yield r.deliverer.deliver(r.entry(simple_message(), "alice@contoso.test", ["bob@fabrikam.test"]))
        self.assertIsInstance(outcome, Transient)
        [health] = r.deliverer.health()
        self.assertEqual(health.state, "unreachable")
        self.assertEqual(health.paused_until, 0.0)


class ClassifyHttpFailureTests(SynchronousTestCase):
    """HTTP statuses from the login host, through requests or MSAL's own HTTP layer."""

    def http_error(self, status):
        response = requests.Response()
        response.status_code = status
        return requests.exceptions.HTTPError("error", response=response)

    def test_requests_http_errors(self):
        self.assertEqual(
            (classify_exception(self.http_error(400)).kind, classify_exception(self.http_error(400)).code),
            ("config", "http_400"))
        for status in (408, 429, 500, 503):
            error = classify_exception(self.http_error(status))
            self.assertEqual((error.kind, error.code), ("transient", f"http_{status}"), status)
        self.assertEqual(classify_exception(requests.exceptions.HTTPError("no response")).code, "http_error")

    def test_msal_http_errors(self):
        MsalServiceError = type("MsalServiceError", (Exception,), {})
        refused = classify_exception(MsalServiceError("HTTP Error: 403"))
        self.assertEqual((refused.kind, refused.code), ("config", "http_403"))
        busy = classify_exception(MsalServiceError("HTTP Error: 503"))
        self.assertEqual((busy.kind, busy.code), ("transient", "http_503"))
        self.assertEqual(classify_exception(MsalServiceError("something else")).code, "internal")

    def test_anything_else_is_a_transient_internal_error(self):
        error = classify_exception(KeyError("x"))
        self.assertEqual((error.kind, error.code), ("transient", "internal"))


class TokenErrorTextTests(TestCase):
    """Entra's code once (it was doubled), no ``..`` at the end, no ``internal: MsalServiceError``."""

    def test_aadsts_code_is_not_doubled(self):
        error = classify_result({"error": "invalid_client", "error_codes": [7000215],
                                 "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the "
                                                      "secret being sent is the value.\r\nTrace ID: 1 Correlation ID: 2"})
        self.assertEqual(str(error).count("AADSTS7000215"), 1)
        self.assertNotIn("Trace ID", str(error))
        self.assertFalse(str(error).endswith("."))

    def test_msal_http_error_is_transient_with_the_status(self):
        from msal.exceptions import MsalServiceError

        error = classify_exception(MsalServiceError("HTTP Error: 503", error=None, error_description=None))
        self.assertEqual((error.kind, error.code), ("transient", "http_503"))
        self.assertNotIn("MsalServiceError", str(error))

    def test_deliverer_config_error_line_has_no_double_stop(self):
        from gateway.delivery.graph.deliverer import GraphDeliverer, _Tenant

        capture = LogCapture.install(self)
        deliverer = GraphDeliverer.__new__(GraphDeliverer)
        deliverer.clock = Clock()
        deliverer.config = type("C", (), {"tenant_backoff": 60.0, "tenant_backoff_max": 3600.0})()
        error = classify_result({"error": "invalid_client", "error_codes": [7000215],
                                 "error_description": "AADSTS7000215: Invalid client secret provided."})
        deliverer._token_failed(_Tenant("default"), error)
        text = "\n".join(capture.messages())
        self.assertIn("AADSTS7000215", text)
        self.assertNotIn("..", text)
        self.assertEqual(text.count("AADSTS7000215"), 1)


class TokenRefusedTextTests(TestCase):
    """A Graph 401 without an error body is logged with its status, not as ``(None)``."""

    timeout = 60

    @inlineCallbacks
    def test_401_without_error_code(self):
        capture = LogCapture.install(self)
        rig = yield start_rig(self, reactor)
        rig.server.inject(Fault(action="raw", status=401, body=b""), operation="sendMail")
        yield rig.deliverer.deliver(rig.entry(simple_message(), "alice@contoso.test", ["bob@fabrikam.test"]))
        text = "\n".join(capture.messages())
        self.assertIn("token refused (HTTP 401)", text)
        self.assertNotIn("(None)", text)
