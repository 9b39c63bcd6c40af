"""
Other real clients against a secured listener: Twisted's own ESMTP client (STARTTLS with
certificate verification, then AUTH), and swaks in a subprocess (``--tls``, AUTH PLAIN/LOGIN,
success and failure, and the implicit-TLS ``--tlsc`` mode).
"""

from __future__ import annotations

import io

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.utils import getProcessOutputAndValue
from twisted.mail.smtp import ESMTPSenderFactory, SMTPClientError
from twisted.trial.unittest import TestCase

from gateway.testing.logs import LogCapture
from tests.security_harness import (
    ALICE_PASSWORD,
    APP_SECRET,
    CLIENT,
    HOST,
    TENANT,
    SecureServer,
)
from tests.tools import require_swaks_with_tls

BODY = b"From: alice@corp.example\nTo: bob@elsewhere.example\nSubject: twisted\n\nhello\n"


class TwistedClientTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def send(self, server, username, password, sender="alice@corp.example", body=BODY):
        with open(server.ca.ca_cert_path, "rb") as f:
            ca = Certificate.loadPEM(f.read())
        context = optionsForClientTLS("localhost", trustRoot=ca)
        done: Deferred = Deferred()
        factory = ESMTPSenderFactory(
            username, password, sender, ["bob@elsewhere.example"], io.BytesIO(body), done,
            contextFactory=context, retries=0, requireAuthentication=True, requireTransportSecurity=True,
        )
        factory.domain = b"client.test"
        connector = reactor.connectTCP(HOST, server.port, factory)
        try:
            result = yield done
        finally:
            connector.disconnect()
            yield server.sessions_closed()
        return result

    @inlineCallbacks
    def test_starttls_then_auth_then_send(self):
        logs = LogCapture.install(self)
        server = yield SecureServer.start(self)
        accepted, recipients = yield self.send(server, b"alice", ALICE_PASSWORD.encode())
        self.assertEqual(accepted, 1)
        [(entry, _)] = server.spool.messages
        self.assertEqual(entry.provenance.auth_identity, "alice")
        self.assertTrue(entry.provenance.tls)
        logs.assert_absent(self, ALICE_PASSWORD)

    @inlineCallbacks
    def test_wrong_password_fails(self):
        server = yield SecureServer.start(self)
        with self.assertRaises(SMTPClientError) as caught:
            yield self.send(server, b"alice", b"not alice's password")
        self.assertEqual(caught.exception.code, 535)
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_passthrough_login(self):
        server = yield SecureServer.start(self, passthrough=True)
        yield self.send(server, f"{TENANT}:{CLIENT}".encode(), APP_SECRET.encode(), sender="scanner@corp.example")
        [(entry, _)] = server.spool.messages
        self.assertEqual(entry.provenance.credential_ref, f"entra:{TENANT}:{CLIENT}")


class SwaksTests(TestCase):
    timeout = 60

    def setUp(self):
        # STARTTLS and port 465 need swaks' Perl TLS modules: a swaks without them is a broken
        # test machine (scripts/test.sh installs them), never a reason to skip.
        self.swaks = require_swaks_with_tls(self)

    @inlineCallbacks
    def swaks_run(self, server, *options):
        args = [
            "--server", f"{HOST}:{server.port}", "--from", "alice@corp.example", "--to", "bob@elsewhere.example",
            "--helo", "swaks.test", "--header", "From: alice@corp.example", "--timeout", "10",
            *options,
        ]
        out, err, code = yield getProcessOutputAndValue(self.swaks, args, env={"PATH": "/usr/bin:/bin"})
        yield server.sessions_closed()
        return out.decode("utf-8", "replace") + err.decode("utf-8", "replace"), code

    @inlineCallbacks
    def test_starttls_auth_plain_and_login(self):
        logs = LogCapture.install(self)
        server = yield SecureServer.start(self)
        for mechanism in ("PLAIN", "LOGIN"):
            transcript, code = yield self.swaks_run(server, "--tls", "--auth", mechanism, "--auth-user", "alice", "--auth-password", ALICE_PASSWORD)
            self.assertEqual(code, 0, transcript)
            self.assertIn("235 2.7.0", transcript)
        self.assertEqual(len(server.spool.messages), 2)
        logs.assert_absent(self, ALICE_PASSWORD)

    @inlineCallbacks
    def test_auth_failure(self):
        server = yield SecureServer.start(self)
        transcript, code = yield self.swaks_run(server, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wrong password")
        self.assertNotEqual(code, 0)
        self.assertIn("535 5.7.8", transcript)
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_auth_without_tls_refused(self):
        server = yield SecureServer.start(self)
        transcript, code = yield self.swaks_run(server, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", ALICE_PASSWORD)
        self.assertNotEqual(code, 0)
        self.assertNotIn("235", transcript)
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_implicit_tls(self):
        server = yield SecureServer.start(self, name="submissions", tls="implicit", auth="required")
        transcript, code = yield self.swaks_run(server, "--tlsc", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", ALICE_PASSWORD)
        self.assertEqual(code, 0, transcript)
        self.assertEqual(len(server.spool.messages), 1)

    @inlineCallbacks
    def test_passthrough(self):
        server = yield SecureServer.start(self, passthrough=True)
        transcript, code = yield self.swaks_run(
            server, "--tls", "--auth", "PLAIN", "--auth-user", f"{TENANT}|{CLIENT}.swaks", "--auth-password", APP_SECRET,
        )
        self.assertEqual(code, 0, transcript)
        [(entry, _)] = server.spool.messages
        self.assertEqual(entry.provenance.credential_ref, f"entra:{TENANT}:{CLIENT}")
