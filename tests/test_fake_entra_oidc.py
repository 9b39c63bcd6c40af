"""
The fake Entra authority speaks like Entra (issue 15): its OpenID Connect discovery document
has ``issuer``, ``jwks_uri`` and the endpoints and ``*_supported`` lists Entra's v2.0 endpoint
returns (before, only four fields: clients other than MSAL for Python, e.g. msal-node, refused
it), and ``jwks_uri`` serves a JWKS whose key matches its certificate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.testing.fake_graph import start_fake_graph
from tests.tools import require_tool

MSAL_NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "msal_node")

#: What an OIDC client needs (OpenID Connect Discovery 1.0, section 3) plus what Entra adds.
REQUIRED = {"issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "response_types_supported",
            "subject_types_supported", "id_token_signing_alg_values_supported"}
ENTRA = {"device_authorization_endpoint", "end_session_endpoint", "userinfo_endpoint", "scopes_supported",
         "response_modes_supported", "token_endpoint_auth_methods_supported", "claims_supported",
         "cloud_instance_name", "msgraph_host", "tenant_region_scope", "request_uri_parameter_supported"}


def b64url_int(text):
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


class FakeEntraDiscoveryTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(self.fake.stop)
        self.context = ssl.create_default_context(cafile=self.fake.ca_path)

    def get(self, url):
        def blocking():
            try:
                with urllib.request.urlopen(url, context=self.context, timeout=10) as response:
                    return response.status, response.headers.get("content-type"), json.load(response)
            except urllib.error.HTTPError as e:
                return e.code, e.headers.get("content-type"), json.load(e)
        return deferToThread(blocking)

    @inlineCallbacks
    def test_discovery_document_has_what_oidc_clients_read(self):
        status, content_type, document = yield self.get(f"{self.fake.authority}/v2.0/.well-known/openid-configuration")
        self.assertEqual((status, content_type), (200, "application/json"))
        self.assertEqual(REQUIRED - set(document), set())
        self.assertEqual(ENTRA - set(document), set())
        authority = self.fake.authority
        self.assertEqual(document["issuer"], f"{authority}/v2.0")
        self.assertEqual(document["token_endpoint"], self.fake.token_endpoint)
        self.assertEqual(document["authorization_endpoint"], f"{authority}/oauth2/v2.0/authorize")
        self.assertEqual(document["jwks_uri"], f"{authority}/discovery/v2.0/keys")
        self.assertIn("code", document["response_types_supported"])
        self.assertEqual(document["id_token_signing_alg_values_supported"], ["RS256"])
        self.assertIn("private_key_jwt", document["token_endpoint_auth_methods_supported"])
        for name in ("token_endpoint", "authorization_endpoint", "jwks_uri", "device_authorization_endpoint",
                     "end_session_endpoint"):
            self.assertTrue(document[name].startswith("https://127.0.0.1:"), name)

    @inlineCallbacks
    def test_jwks_uri_serves_the_signing_key(self):
        _, _, document = yield self.get(f"{self.fake.authority}/v2.0/.well-known/openid-configuration")
        status, content_type, jwks = yield self.get(document["jwks_uri"])
        self.assertEqual((status, content_type), (200, "application/json"))
        [key] = jwks["keys"]
        self.assertEqual((key["kty"], key["use"], key["issuer"]), ("RSA", "sig", document["issuer"]))
        der = base64.b64decode(key["x5c"][0])
        thumbprint = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
        self.assertEqual((key["kid"], key["x5t"]), (thumbprint, thumbprint))
        numbers = x509.load_der_x509_certificate(der).public_key().public_numbers()
        self.assertEqual((b64url_int(key["n"]), b64url_int(key["e"])), (numbers.n, numbers.e))
        # The same keys on every request (clients cache them by kid).
        _, _, again = yield self.get(document["jwks_uri"])
        self.assertEqual(again, jwks)

    @inlineCallbacks
    def test_unknown_tenant_is_refused_like_entra(self):
        base = self.fake.authority.rsplit("/", 1)[0]
        for url in (f"{base}/no-such-tenant/v2.0/.well-known/openid-configuration", f"{base}/no-such-tenant/discovery/v2.0/keys"):
            status, _, body = yield self.get(url)
            self.assertEqual(status, 400, url)
            self.assertIn("AADSTS90002", body["error_description"])


class MsalNodeTests(TestCase):
    """msal-node (MSAL for JavaScript) resolves the fake's endpoints and gets a token from it."""

    timeout = 120

    @inlineCallbacks
    def test_msal_node_gets_a_token_from_the_fake_authority(self):
        node = require_tool(self, "node", "nodejs")
        if not os.path.isdir(os.path.join(MSAL_NODE, "node_modules", "@azure", "msal-node")):
            self.fail("msal-node is not installed: run `npm install --prefix tests/msal_node` (scripts/test.sh does)")
        fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(fake.stop)
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=fake.ca_path)
        result = yield deferToThread(
            subprocess.run, [node, os.path.join(MSAL_NODE, "acquire_token.js"), fake.authority, fake.client_id,
                             fake.client_secret], capture_output=True, text=True, env=env, cwd=MSAL_NODE, timeout=90)
        self.assertEqual(json.loads(result.stdout or "{}"), {"ok": True, "tokenType": "Bearer", "hasToken": True},
                         result.stdout + result.stderr)
        self.assertEqual(fake.operations(), ["discovery", "token"])
        self.assertNotIn(fake.client_secret, result.stdout + result.stderr)
