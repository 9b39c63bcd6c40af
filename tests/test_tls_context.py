"""
TLSContextSource: hardened defaults, legacy listeners, start-up errors and reload.

Handshakes are real OpenSSL handshakes (Python ``ssl`` client against the server context) over
memory BIOs; the socket-level STARTTLS/implicit TLS tests are in test_security_smtp.
"""

from __future__ import annotations

import os
import shutil
import ssl

from OpenSSL import SSL
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError
from gateway.smtp.tls import TLSContextSource
from gateway.testing.certs import TestCA
from gateway.testing.logs import LogCapture
from tests.tls_helpers import client_context, memory_handshake, tls_listener


class TLSDefaultsTests(SynchronousTestCase):
    def setUp(self):
        self.ca = TestCA.create(self.mktemp())
        self.cert = self.ca.issue()
        self.source = TLSContextSource(tls_listener(self.cert))

    def handshake(self, version=None, ciphers="ALL:@SECLEVEL=0"):
        return memory_handshake(self.source.server_options(), client_context(self.ca.ca_cert_path, version, ciphers))

    def test_tls12_and_tls13_work(self):
        self.assertEqual(self.handshake(ssl.TLSVersion.TLSv1_2)[0], "TLSv1.2")
        self.assertEqual(self.handshake(ssl.TLSVersion.TLSv1_3)[0], "TLSv1.3")

    def test_tls11_and_tls10_refused_by_default(self):
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            self.assertRaises((ssl.SSLError, SSL.Error), self.handshake, version)

    def test_only_forward_secret_aead_suites_on_tls12(self):
        version, cipher, _ = self.handshake(ssl.TLSVersion.TLSv1_2)
        self.assertIn("ECDHE", cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)
        # A client offering only CBC or only static-RSA suites gets nothing.
        for weak in ("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256:AES256-SHA"):
            self.assertRaises((ssl.SSLError, SSL.Error), self.handshake, ssl.TLSVersion.TLSv1_2, weak)

    def test_cipher_scan_accepts_only_forward_secret_aead_suites(self):
        """What testssl.sh/sslyze would report: offer each TLS 1.2 suite alone, see which work."""
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
        suites = [c["name"] for c in probe.get_ciphers() if c["protocol"] != "TLSv1.3"]
        accepted = []
        for suite in suites:
            try:
                self.handshake(ssl.TLSVersion.TLSv1_2, suite + ":@SECLEVEL=0")
            except (ssl.SSLError, SSL.Error):
                continue
            accepted.append(suite)
        self.assertTrue(accepted)
        for suite in accepted:
            self.assertTrue(suite.startswith("ECDHE-"), suite)
            self.assertTrue("GCM" in suite or "CHACHA20" in suite, suite)

    def test_no_renegotiation_no_compression_server_preference(self):
        options = self.source.server_options().getContext().set_options(0)
        for flag in (SSL.OP_NO_RENEGOTIATION, SSL.OP_NO_COMPRESSION, SSL.OP_CIPHER_SERVER_PREFERENCE, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(options & flag, hex(flag))

    def test_chain_file_serves_leaf_first(self):
        # A tls_cert with leaf + CA (a "fullchain.pem") still presents the leaf.
        chain = os.path.join(self.ca.directory, "fullchain.pem")
        with open(chain, "wb") as f:
            f.write(self.cert.cert_pem + open(self.ca.ca_cert_path, "rb").read())
        source = TLSContextSource(tls_listener(self.cert, tls_cert=chain))
        _, _, der = memory_handshake(source.server_options(), client_context(self.ca.ca_cert_path))
        self.assertEqual(ssl.DER_cert_to_PEM_cert(der).encode().strip(), self.cert.cert_pem.strip())


class LegacyListenerTests(SynchronousTestCase):
    def setUp(self):
        self.ca = TestCA.create(self.mktemp())
        self.cert = self.ca.issue()

    def test_tls11_accepted_when_configured_and_warned(self):
        logs = LogCapture.install(self)
        source = TLSContextSource(tls_listener(self.cert, name="printers", tls_min_version="1.1"))
        version, _, _ = memory_handshake(source.server_options(), client_context(self.ca.ca_cert_path, ssl.TLSVersion.TLSv1_1))
        self.assertEqual(version, "TLSv1.1")
        # still refuses what is below the configured minimum
        self.assertRaises(
            (ssl.SSLError, SSL.Error), memory_handshake, source.server_options(),
            client_context(self.ca.ca_cert_path, ssl.TLSVersion.TLSv1),
        )
        warnings = [e for e in logs.events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("printers", logs.text())
        self.assertIn("1.1", logs.text())

    def test_tls10_accepted_when_configured(self):
        source = TLSContextSource(tls_listener(self.cert, tls_min_version="1.0"))
        version, _, _ = memory_handshake(source.server_options(), client_context(self.ca.ca_cert_path, ssl.TLSVersion.TLSv1))
        self.assertEqual(version, "TLSv1")

    def test_modern_listener_logs_no_warning(self):
        logs = LogCapture.install(self)
        TLSContextSource(tls_listener(self.cert))
        self.assertEqual([e for e in logs.events if e.get("log_level") == LogLevel.warn], [])


class StartupErrorTests(SynchronousTestCase):
    def setUp(self):
        self.ca = TestCA.create(self.mktemp())
        self.cert = self.ca.issue()

    def assertConfigError(self, listener, key, *fragments):
        e = self.assertRaises(ConfigError, TLSContextSource, listener)
        self.assertEqual(e.key, key)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))
        self.assertNotIn("PRIVATE KEY", str(e))
        return e

    def test_missing_certificate(self):
        missing = os.path.join(self.ca.directory, "nope.pem")
        self.assertConfigError(tls_listener(self.cert, tls_cert=missing), "listener.submission.tls_cert", missing)

    def test_unreadable_key(self):
        # (a directory: unreadable as a file even for root, who ignores chmod 0)
        unreadable = os.path.join(self.ca.directory, "keydir")
        os.mkdir(unreadable, 0o700)
        self.assertConfigError(tls_listener(self.cert, tls_key=unreadable), "listener.submission.tls_key", unreadable, "cannot read")

    def test_mismatched_key(self):
        other = self.ca.issue(basename="other")
        self.assertConfigError(
            tls_listener(self.cert, tls_key=other.key_path), "listener.submission.tls_key", other.key_path, "does not match",
        )

    def test_world_readable_key_refused(self):
        os.chmod(self.cert.key_path, 0o644)
        self.assertConfigError(tls_listener(self.cert), "listener.submission.tls_key", self.cert.key_path, "readable by everyone")

    def test_not_a_certificate(self):
        self.assertConfigError(tls_listener(self.cert, tls_cert=self.cert.key_path), "listener.submission.tls_cert", "no PEM certificate")

    def test_combined_pem_without_tls_key(self):
        combined = os.path.join(self.ca.directory, "combined.pem")
        with open(self.cert.key_path, "rb") as k:
            data = self.cert.cert_pem + k.read()
        fd = os.open(combined, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.close(fd)
        source = TLSContextSource(tls_listener(self.cert, tls_cert=combined, tls_key=None))
        memory_handshake(source.server_options(), client_context(self.ca.ca_cert_path))


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        self.ca = TestCA.create(self.mktemp())
        self.first = self.ca.issue()
        self.cert_path = os.path.join(self.ca.directory, "live.pem")
        self.key_path = os.path.join(self.ca.directory, "live.key")
        self.install(self.first)
        self.source = TLSContextSource(tls_listener(self.first, tls_cert=self.cert_path, tls_key=self.key_path))

    def install(self, issued):
        # Like certbot/ACME clients: write new files, rename into place.
        for src, dst in ((issued.cert_path, self.cert_path), (issued.key_path, self.key_path)):
            shutil.copy(src, dst + ".new")
            os.chmod(dst + ".new", 0o600)
            os.rename(dst + ".new", dst)

    def served(self):
        _, _, der = memory_handshake(self.source.server_options(), client_context(self.ca.ca_cert_path))
        return ssl.DER_cert_to_PEM_cert(der).encode().strip()

    def test_reload_serves_new_certificate(self):
        old_options = self.source.server_options()
        second = self.ca.issue()
        self.install(second)
        self.assertTrue(self.source.reload())
        self.assertEqual(self.served(), second.cert_pem.strip())
        # An established session keeps the options object it was built from.
        self.assertIsNot(old_options, self.source.server_options())
        _, _, der = memory_handshake(old_options, client_context(self.ca.ca_cert_path))
        self.assertEqual(ssl.DER_cert_to_PEM_cert(der).encode().strip(), self.first.cert_pem.strip())

    def test_check_for_changes_only_reloads_on_change(self):
        self.assertFalse(self.source.check_for_changes())
        self.assertEqual(self.source.reloads, 0)
        second = self.ca.issue()
        self.install(second)
        self.assertTrue(self.source.check_for_changes())
        self.assertEqual(self.served(), second.cert_pem.strip())
        self.assertFalse(self.source.check_for_changes())

    def test_failed_reload_keeps_old_certificate_and_logs(self):
        logs = LogCapture.install(self)
        other = self.ca.issue(basename="other")
        second = self.ca.issue()
        # new certificate with a key that does not belong to it (half-finished renewal)
        shutil.copy(second.cert_path, self.cert_path)
        shutil.copy(other.key_path, self.key_path)
        self.assertFalse(self.source.check_for_changes())
        self.assertEqual(self.served(), self.first.cert_pem.strip())
        self.assertEqual(self.source.failed_reloads, 1)
        errors = [e for e in logs.events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("submission", logs.text())
        self.assertIn("previous certificate", logs.text())
        # not retried (nor logged) every tick while the files stay broken
        self.assertFalse(self.source.check_for_changes())
        self.assertEqual(self.source.failed_reloads, 1)
