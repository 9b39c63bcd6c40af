"""
Security of a real listener on loopback, with real TLS handshakes and real clients (smtplib in
a thread, and a raw socket for attacks no well-behaved client makes): STARTTLS and implicit
TLS, AUTH only under TLS, STARTTLS injection, state reset, TLS versions, certificate reload,
open relay, sender spoofing, brute force, pass-through logins, and secrets kept out of logs.
"""

from __future__ import annotations

import base64
import smtplib
import ssl

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.auth.throttle import ThrottleSettings
from gateway.testing.logs import LogCapture
from tests.security_harness import (
    ALICE_PASSWORD,
    APP_SECRET,
    CLIENT,
    HOST,
    TENANT,
    TIMEOUT,
    RawClient,
    SecureServer,
    ehlo_keywords,
)
from tests.tls_helpers import client_context as versioned_client_context

MESSAGE = "From: alice@corp.example\r\nTo: bob@elsewhere.example\r\nSubject: hi\r\n\r\nhello\r\n"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class StartTLSAuthTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.logs = LogCapture.install(self)
        self.server = yield SecureServer.start(self)

    @inlineCallbacks
    def tearDown(self):
        yield self.server.sessions_closed()
        self.logs.assert_absent(self, ALICE_PASSWORD, "wrong password 123")

    @inlineCallbacks
    def test_smtplib_starttls_login_and_send(self):
        ctx = self.server.client_context()

        def client():
            with smtplib.SMTP(HOST, self.server.port, timeout=TIMEOUT) as s:
                s.ehlo("client.test")
                before = set(s.esmtp_features)
                s.starttls(context=ctx)
                s.ehlo("client.test")
                after = set(s.esmtp_features)
                s.login("alice", ALICE_PASSWORD)
                s.sendmail("alice@corp.example", ["bob@elsewhere.example"], MESSAGE)
                return before, after

        before, after = yield deferToThread(client)
        self.assertIn("starttls", before)
        self.assertNotIn("auth", before)
        self.assertIn("auth", after)
        self.assertNotIn("starttls", after)
        [(entry, data)] = self.server.spool.messages
        self.assertEqual(entry.provenance.auth_identity, "alice")
        self.assertTrue(entry.provenance.tls)
        self.assertIsNone(entry.provenance.credential_ref)
        self.assertEqual(entry.envelope.recipients, ("bob@elsewhere.example",))

    @inlineCallbacks
    def test_auth_before_tls_refused_538(self):
        def client():
            c = RawClient(self.server.port)
            try:
                c.reply()
                return c.command("EHLO client.test"), c.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD)), c.command("MAIL FROM:<alice@corp.example>")
            finally:
                c.close()

        (_, ehlo), auth, mail = yield deferToThread(client)
        self.assertNotIn("AUTH", ehlo_keywords(ehlo))
        self.assertEqual(auth[0], 538)
        self.assertIn("5.7.11", auth[1][0])
        # not authenticated, untrusted: no relay
        self.assertEqual(mail[0], 530)
        self.assertIn("5.7.0", mail[1][0])

    @inlineCallbacks
    def test_wrong_password_535_and_session_continues(self):
        ctx = self.server.client_context()

        def client():
            with smtplib.SMTP(HOST, self.server.port, timeout=TIMEOUT) as s:
                s.starttls(context=ctx)
                s.ehlo("client.test")
                code, text = s.docmd("AUTH", "PLAIN " + plain("alice", "wrong password 123"))
                noop = s.noop()
                s.login("alice", ALICE_PASSWORD)
                return code, text, noop[0]

        code, text, noop = yield deferToThread(client)
        self.assertEqual(code, 535)
        self.assertIn(b"5.7.8", text)
        self.assertEqual(noop, 250)
        self.assertIn("AUTH failed", self.logs.text())

    @inlineCallbacks
    def test_starttls_injection_is_not_executed(self):
        def client():
            c = RawClient(self.server.port)
            try:
                c.reply()
                c.command("EHLO client.test")
                # STARTTLS and a command in one segment: the MAIL was sent in plaintext.
                c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
                first = c.reply()
                return first, c.closed()
            finally:
                c.close()

        first, closed = yield deferToThread(client)
        # The 220 may or may not get out before the abort; the injected MAIL is never answered.
        self.assertIn(first[0], (0, 220))
        self.assertTrue(closed)
        self.assertEqual(self.server.spool.messages, [])
        self.assertIn("plaintext after STARTTLS", self.logs.text())

    @inlineCallbacks
    def test_state_reset_after_tls_and_no_second_starttls(self):
        ctx = self.server.client_context()

        def client():
            c = RawClient(self.server.port)
            try:
                c.reply()
                c.command("EHLO before-tls.test")
                assert c.command("STARTTLS")[0] == 220
                c.starttls(ctx)
                mail_without_ehlo = c.command("MAIL FROM:<alice@corp.example>")
                ehlo = c.command("EHLO after-tls.test")
                second = c.command("STARTTLS")
                auth = c.command("AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
                c.command("QUIT")
                return mail_without_ehlo, ehlo, second, auth
            finally:
                c.close()

        mail, ehlo, second, auth = yield deferToThread(client)
        self.assertEqual(mail[0], 503)
        self.assertIn("AUTH", ehlo_keywords(ehlo[1]))
        self.assertNotIn("STARTTLS", ehlo_keywords(ehlo[1]))
        self.assertEqual(second[0], 503)
        self.assertEqual(auth[0], 235)

    @inlineCallbacks
    def test_tls11_refused_by_default(self):
        ctx = versioned_client_context(self.server.ca.ca_cert_path, ssl.TLSVersion.TLSv1_1)

        def client():
            c = RawClient(self.server.port)
            try:
                c.reply()
                c.command("EHLO client.test")
                c.command("STARTTLS")
                try:
                    c.starttls(ctx)
                except (ssl.SSLError, ConnectionError) as e:
                    return e
                return None
            finally:
                c.close()

        error = yield deferToThread(client)
        self.assertIsInstance(error, (ssl.SSLError, ConnectionError))

    @inlineCallbacks
    def test_reload_picks_up_new_certificate_without_dropping_sessions(self):
        ctx = self.server.client_context()

        def open_tls_session():
            c = RawClient(self.server.port)
            c.reply()
            c.command("EHLO client.test")
            c.command("STARTTLS")
            c.starttls(ctx)
            return c

        def served(c):
            return ssl.DER_cert_to_PEM_cert(c.sock.getpeercert(binary_form=True)).encode().strip()

        old = yield deferToThread(open_tls_session)
        self.assertEqual(served(old), self.server.cert.cert_pem.strip())
        renewed = self.server.ca.issue()
        self.server.install_certificate(renewed)
        self.assertTrue(self.server.tls.check_for_changes())  # the SIGHUP path calls reload() the same way
        new = yield deferToThread(open_tls_session)
        try:
            self.assertEqual(served(new), renewed.cert_pem.strip())
            # the session established before the reload carries on
            code, _ = yield deferToThread(old.command, "EHLO client.test")
            self.assertEqual(code, 250)
            code, _ = yield deferToThread(old.command, "AUTH PLAIN " + plain("alice", ALICE_PASSWORD))
            self.assertEqual(code, 235)
        finally:
            old.close()
            new.close()


class LegacyTLSListenerTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_tls11_accepted_when_configured(self):
        server = yield SecureServer.start(self, name="printers", tls_min_version="1.1")
        ctx = versioned_client_context(server.ca.ca_cert_path, ssl.TLSVersion.TLSv1_1)

        def client():
            c = RawClient(server.port)
            try:
                c.reply()
                c.command("EHLO printer.test")
                c.command("STARTTLS")
                c.starttls(ctx)
                version = c.sock.version()
                auth = c.command("EHLO printer.test")
                c.command("QUIT")
                return version, auth
            finally:
                c.close()

        version, ehlo = yield deferToThread(client)
        self.assertEqual(version, "TLSv1.1")
        self.assertIn("AUTH", ehlo_keywords(ehlo[1]))
        yield server.sessions_closed()


class ImplicitTLSTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_smtp_ssl_login_and_send(self):
        logs = LogCapture.install(self)
        server = yield SecureServer.start(self, name="submissions", tls="implicit", auth="required")
        ctx = server.client_context()

        def client():
            with smtplib.SMTP_SSL(HOST, server.port, timeout=TIMEOUT, context=ctx) as s:
                s.ehlo("client.test")
                features = set(s.esmtp_features)
                s.login("alice", ALICE_PASSWORD)
                s.sendmail("alice@corp.example", ["bob@elsewhere.example"], MESSAGE)
                return features

        features = yield deferToThread(client)
        self.assertIn("auth", features)
        self.assertNotIn("starttls", features)
        [(entry, _)] = server.spool.messages
        self.assertTrue(entry.provenance.tls)
        self.assertEqual(entry.provenance.auth_identity, "alice")
        yield server.sessions_closed()
        logs.assert_absent(self, ALICE_PASSWORD)

    @inlineCallbacks
    def test_plaintext_client_gets_nothing(self):
        server = yield SecureServer.start(self, name="submissions", tls="implicit", auth="required")

        def client():
            c = RawClient(server.port)
            try:
                c.send(b"EHLO client.test\r\n")
                return c.reply()
            finally:
                c.close()

        code, _ = yield deferToThread(client)
        self.assertEqual(code, 0)
        yield server.sessions_closed()


class RelayTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def relay_attempt(self, server, sender="someone@corp.example"):
        def client():
            c = RawClient(server.port)
            try:
                c.reply()
                c.command("EHLO client.test")
                mail = c.command(f"MAIL FROM:<{sender}>")
                rcpt = c.command("RCPT TO:<victim@elsewhere.example>")
                data = c.command("DATA")
                if data[0] == 354:
                    data = (data[0], c.command("Subject: test\r\n\r\nbody\r\n."))
                c.command("QUIT")
                return mail, rcpt, data
            finally:
                c.close()

        result = yield deferToThread(client)
        yield server.sessions_closed()
        return result

    @inlineCallbacks
    def test_open_relay_refused_554_without_auth_offered(self):
        server = yield SecureServer.start(self, name="mx", tls="none", auth="none", trusted_networks=())
        mail, rcpt, data = yield self.relay_attempt(server)
        self.assertEqual((mail[0], rcpt[0]), (554, 503))
        self.assertIn("5.7.1", mail[1][0])
        self.assertEqual(server.spool.messages, [])

    @inlineCallbacks
    def test_open_relay_refused_530_when_auth_offered(self):
        import ipaddress
        server = yield SecureServer.start(self, auth="optional", trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),))
        mail, _, _ = yield self.relay_attempt(server)
        self.assertEqual(mail[0], 530)
        self.assertIn("5.7.0", mail[1][0])

    @inlineCallbacks
    def test_trusted_network_relays_but_not_when_auth_required(self):
        import ipaddress
        loopback = (ipaddress.ip_network("127.0.0.0/8"),)
        server = yield SecureServer.start(self, name="devices", tls="none", auth="none", trusted_networks=loopback, trusted_senders=("*@corp.example",))
        mail, rcpt, data = yield self.relay_attempt(server)
        self.assertEqual((mail[0], rcpt[0], data[0], data[1][0]), (250, 250, 354, 250))
        self.assertEqual(len(server.spool.messages), 1)
        mail, _, _ = yield self.relay_attempt(server, sender="ceo@other.example")
        self.assertEqual(mail[0], 550)
        required = yield SecureServer.start(self, name="sub", auth="required", trusted_networks=loopback)
        mail, _, _ = yield self.relay_attempt(required)
        self.assertEqual(mail[0], 530)


class SpoofingTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_envelope_and_header_spoofing_refused(self):
        server = yield SecureServer.start(self)
        ctx = server.client_context()

        def client():
            results = {}
            with smtplib.SMTP(HOST, server.port, timeout=TIMEOUT) as s:
                s.starttls(context=ctx)
                s.login("alice", ALICE_PASSWORD)
                results["envelope"] = s.docmd("MAIL", "FROM:<ceo@corp.example>")
                s.rset()
                try:
                    s.sendmail("alice@corp.example", ["bob@elsewhere.example"], MESSAGE.replace("From: alice@", "From: ceo@"))
                except smtplib.SMTPDataError as e:
                    results["header"] = (e.smtp_code, e.smtp_error)
                try:
                    s.sendmail("alice@corp.example", ["bob@elsewhere.example"], "Sender: ceo@corp.example\r\n" + MESSAGE)
                except smtplib.SMTPDataError as e:
                    results["sender"] = (e.smtp_code, e.smtp_error)
                s.sendmail("alice@corp.example", ["bob@elsewhere.example"], MESSAGE)
            return results

        results = yield deferToThread(client)
        self.assertEqual(results["envelope"][0], 550)
        self.assertIn(b"5.7.1", results["envelope"][1])
        self.assertIn(b"ceo@corp.example", results["envelope"][1])
        self.assertEqual(results["header"][0], 550)
        self.assertIn(b"From header", results["header"][1])
        self.assertEqual(results["sender"][0], 550)
        self.assertIn(b"Sender header", results["sender"][1])
        self.assertEqual(len(server.spool.messages), 1)
        yield server.sessions_closed()


class BruteForceTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_failures_lead_to_421_and_lockout(self):
        logs = LogCapture.install(self)
        server = yield SecureServer.start(self, throttle=ThrottleSettings(max_failures=3, base_delay=0, max_delay=0))
        ctx = server.client_context()

        def attempt(password, tries):
            codes = []
            with smtplib.SMTP(HOST, server.port, timeout=TIMEOUT) as s:
                s.starttls(context=ctx)
                s.ehlo("client.test")
                for _ in range(tries):
                    try:
                        code, _ = s.docmd("AUTH", "PLAIN " + plain("alice", password))
                    except smtplib.SMTPServerDisconnected:
                        codes.append("closed")
                        break
                    codes.append(code)
                    if code == 421:
                        codes.append("closed" if _closed(s) else "open")
                        break
            return codes

        codes = yield deferToThread(attempt, "guess-1", 5)
        self.assertEqual(codes, [535, 535, 421, "closed"])
        codes = yield deferToThread(attempt, ALICE_PASSWORD, 1)
        self.assertEqual(codes, [421, "closed"])
        stats = server.auth.stats()
        self.assertEqual(stats["addresses_locked_out"], 1)
        self.assertEqual(stats["login_refused_throttled_total"], 1)
        yield server.sessions_closed()
        logs.assert_absent(self, "guess-1", ALICE_PASSWORD)


def _closed(s: smtplib.SMTP) -> bool:
    try:
        s.sock.settimeout(TIMEOUT)
        return s.sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


class PassThroughTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_login_with_app_secret_delivers_with_tenant_credentials(self):
        logs = LogCapture.install(self)
        server = yield SecureServer.start(self, passthrough=True)
        ctx = server.client_context()
        login = f"{TENANT}@{CLIENT}.scanner"

        def client():
            with smtplib.SMTP(HOST, server.port, timeout=TIMEOUT) as s:
                s.starttls(context=ctx)
                s.ehlo("client.test")
                wrong = s.docmd("AUTH", "PLAIN " + plain(login, "not-the-secret"))
                s.login(login, APP_SECRET)
                s.sendmail("scanner@corp.example", ["bob@elsewhere.example"], MESSAGE.replace("alice@", "scanner@"))
                return wrong

        wrong = yield deferToThread(client)
        self.assertEqual(wrong[0], 535)
        [(entry, data)] = server.spool.messages
        self.assertEqual(entry.provenance.credential_ref, f"entra:{TENANT}:{CLIENT}")
        self.assertEqual(entry.provenance.auth_identity, login)
        self.assertNotIn(APP_SECRET.encode(), data)
        # the secret survives a restart encrypted, never in plaintext
        restored = yield server.auth.credential_store.resolve(entry.provenance.credential_ref)
        self.assertEqual(restored.client_secret.reveal(), APP_SECRET)
        yield server.sessions_closed()
        logs.assert_absent(self, APP_SECRET, "not-the-secret")

    @inlineCallbacks
    def test_entra_unreachable_is_temporary(self):
        server = yield SecureServer.start(self, passthrough=True)
        server.entra.down = True
        ctx = server.client_context()

        def client():
            with smtplib.SMTP(HOST, server.port, timeout=TIMEOUT) as s:
                s.starttls(context=ctx)
                s.ehlo("client.test")
                return s.docmd("AUTH", "PLAIN " + plain(f"{TENANT}|{CLIENT}", APP_SECRET))

        code, text = yield deferToThread(client)
        self.assertEqual(code, 454)
        self.assertIn(b"4.7.0", text)
        self.flushLoggedErrors(ConnectionRefusedError)
        yield server.sessions_closed()
