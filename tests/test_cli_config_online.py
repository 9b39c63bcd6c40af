"""
``graphsmtp-config check --online`` against the fake Entra over real HTTPS: each failure names
the AADSTS code once, says what to do, and never prints a secret.

The command is blocking (as a CLI is); it runs in a thread so the reactor can serve the fake.
"""

from __future__ import annotations

import io
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.cli.configcheck import main
from gateway.cli.online_check import token_roles
from gateway.testing.fake_graph import (
    Fault,
    create_client_certificate,
    start_fake_graph,
)


class OnlineCheckTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, **options):
        self.fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()), **options)
        self.addCleanup(self.fake.stop)

    def write_config(self, **graph):
        settings = {"tenant_id": self.fake.tenant_id, "client_id": self.fake.client_id,
                    "client_secret": self.fake.client_secret, "authority": self.fake.authority,
                    "graph_url": self.fake.graph_url, "ca_bundle": self.fake.ca_path}
        settings.update(graph)
        settings = {k: v for k, v in settings.items() if v is not None}
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = {json.dumps(os.path.abspath(self.mktemp()))}\n[graph]\n')
            for key, value in settings.items():
                f.write(f"{key} = {json.dumps(value)}\n")
        return path

    @inlineCallbacks
    def check(self, path):
        out = io.StringIO()
        code = yield deferToThread(main, ["check", "--online", path], out)
        text = out.getvalue()
        self.assertNotIn(self.fake.client_secret, text)
        return code, text

    @inlineCallbacks
    def test_working_tenant(self):
        yield self.start()
        code, out = yield self.check(self.write_config())
        self.assertEqual(code, 0, out)
        self.assertIn("tenant default ok: token issued", out)
        self.assertIn("Mail.Send", out)

    @inlineCallbacks
    def test_bad_secret(self):
        yield self.start()
        wrong = "wrong-secret-Xy7"
        code, out = yield self.check(self.write_config(client_secret=wrong))
        self.assertEqual(code, 78, out)
        self.assertIn("FAILED: AADSTS7000215 bad client secret", out)
        self.assertEqual(out.count("AADSTS7000215"), 1)
        self.assertIn("action: put the secret's Value", out)
        self.assertNotIn(wrong, out)
        self.assertNotIn("..", out)

    @inlineCallbacks
    def test_tenant_not_found(self):
        yield self.start()
        code, out = yield self.check(self.write_config(
            tenant_id="no-such-tenant", authority=self.fake.base + "/no-such-tenant"))
        self.assertEqual(code, 78, out)
        self.assertIn("FAILED: AADSTS90002 tenant not found", out)
        self.assertIn("graph.tenant_id", out)

    @inlineCallbacks
    def test_expired_certificate(self):
        yield self.start()
        cert = create_client_certificate(os.path.abspath(self.mktemp()), valid_days=-2)
        self.fake.register_certificate(cert.cert_pem)
        code, out = yield self.check(self.write_config(
            client_secret=None, certificate=cert.cert_path, certificate_key_file=cert.key_path))
        self.assertEqual(code, 78, out)
        self.assertIn("certificate    EXPIRED on", out)
        self.assertIn("AADSTS700027", out)
        self.assertIn("The key used is expired", out)
        with open(cert.key_path) as f:
            key = f.read()
        self.assertNotIn(key.splitlines()[1], out)

    @inlineCallbacks
    def test_consent_missing_in_the_token(self):
        yield self.start(roles=())
        code, out = yield self.check(self.write_config())
        self.assertEqual(code, 78, out)
        self.assertIn("no Mail.Send application permission (admin consent missing)", out)
        self.assertIn("grant admin consent", out)

    @inlineCallbacks
    def test_consent_missing_from_entra(self):
        yield self.start()
        self.fake.inject(Fault.consent_missing(), operation="token")
        code, out = yield self.check(self.write_config())
        self.assertEqual(code, 78, out)
        self.assertIn("FAILED: AADSTS65001 admin consent missing", out)

    @inlineCallbacks
    def test_token_endpoint_down(self):
        yield self.start()
        self.fake.inject(Fault.status_code(503), operation="token", times=None)
        code, out = yield self.check(self.write_config())
        self.assertEqual(code, 75, out)
        self.assertIn("FAILED: token endpoint unreachable (HTTP 503)", out)
        self.assertNotIn("MsalServiceError", out)

    @inlineCallbacks
    def test_valid_certificate_is_shown(self):
        yield self.start()
        cert = create_client_certificate(os.path.abspath(self.mktemp()), valid_days=30)
        self.fake.register_certificate(cert.cert_pem)
        code, out = yield self.check(self.write_config(
            client_secret=None, certificate=cert.cert_path, certificate_key_file=cert.key_path))
        self.assertEqual(code, 0, out)
        self.assertRegex(out, r"certificate    thumbprint [0-9A-Fa-f]{40}, valid until \d{4}-")
        self.assertIn(f"delivery       Microsoft Graph ({self.fake.graph_url})", out)
        self.assertIn("tenant default ok: token issued", out)

    @inlineCallbacks
    def test_drafts_without_mail_readwrite_warn(self):
        yield self.start(roles=("Mail.Send",))
        code, out = yield self.check(self.write_config(hidden_recipients="draft"))
        self.assertEqual(code, 0, out)
        self.assertIn("permissions Mail.Send\n", out)
        self.assertIn('no Mail.ReadWrite permission: messages that need a draft (graph.hidden_recipients = "draft")', out)

    def test_capture_configuration_skips(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = {json.dumps(os.path.abspath(self.mktemp()))}\n')
        out = io.StringIO()
        self.assertEqual(main(["check", "--online", path], out), 0)
        self.assertIn("online check   skipped", out.getvalue())

    def test_token_roles_reads_only_jwts(self):
        self.assertIsNone(token_roles("opaque"))
        self.assertIsNone(token_roles("a.%%%.c"))


class FakeGraphConsentTests(TestCase):
    """The fake answers a send without Mail.Send as Graph does: 403 ErrorAccessDenied."""

    timeout = 60

    @inlineCallbacks
    def test_send_without_mail_send_is_403(self):
        from gateway.delivery.interfaces import Permanent
        from tests.graph_helpers import simple_message, start_rig

        rig = yield start_rig(self, reactor, server_options={"roles": ()})
        outcome = yield rig.deliverer.deliver(rig.entry(simple_message(), "alice@contoso.test", ["bob@fabrikam.test"]))
        self.assertIsInstance(outcome, Permanent)
        self.assertIn("ErrorAccessDenied", outcome.reason)
