"""
TLS for old devices, on purpose (issue 12 item 5): a ``tls_min_version = "1.0"`` listener also
accepts the RSA key exchange suites old printers offer (with an RSA certificate, warned about at
start-up), ``tls_ciphers`` replaces the suite list per listener, and graphsmtp-certs makes RSA
keys on request.  Handshakes are real OpenSSL on both sides; the end-to-end test is a TLS 1.0
STARTTLS client offering only AES128-SHA against the running gateway.
"""

from __future__ import annotations

import io
import os
import smtplib
import ssl
import warnings

from OpenSSL import SSL, crypto
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.cli import certs as certs_cli
from gateway.config import ConfigError
from gateway.config.loader import build_config
from gateway.smtp.tls import TLSContextSource
from gateway.testing.certs import TestCA
from gateway.testing.harness import start_gateway
from gateway.testing.logs import LogCapture
from tests.tls_helpers import client_context, memory_handshake, tls_listener

RSA_KX = "AES128-SHA:@SECLEVEL=0"  # what a 2008 printer offers: RSA key exchange, CBC, SHA-1
HANDSHAKE_ERRORS = (ssl.SSLError, SSL.Error)




class OldDeviceCipherTests(SynchronousTestCase):
    def setUp(self):
        self.ca = TestCA.create(self.mktemp())
        self.rsa = self.ca.issue(key_type="rsa")

    def handshake(self, source, version, ciphers):
        return memory_handshake(source.server_options(), client_context(self.ca.ca_cert_path, version, ciphers))

    def test_tls10_listener_accepts_rsa_key_exchange(self):
        source = TLSContextSource(tls_listener(self.rsa, name="printers", tls_min_version="1.0"))
        version, cipher, _ = self.handshake(source, ssl.TLSVersion.TLSv1, RSA_KX)
        self.assertEqual((version, cipher), ("TLSv1", "AES128-SHA"))

    def test_forward_secrecy_still_preferred_on_the_legacy_listener(self):
        source = TLSContextSource(tls_listener(self.rsa, tls_min_version="1.0"))
        _, cipher, _ = self.handshake(source, ssl.TLSVersion.TLSv1_2, "AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0")
        self.assertEqual(cipher, "ECDHE-RSA-AES128-GCM-SHA256")
        _, cipher, _ = self.handshake(source, ssl.TLSVersion.TLSv1, "AES128-SHA:ECDHE-RSA-AES128-SHA:@SECLEVEL=0")
        self.assertEqual(cipher, "ECDHE-RSA-AES128-SHA")

    def test_default_listener_refuses_rsa_key_exchange(self):
        source = TLSContextSource(tls_listener(self.rsa))
        self.assertRaises(HANDSHAKE_ERRORS, self.handshake, source, ssl.TLSVersion.TLSv1_2, "AES128-SHA:AES128-GCM-SHA256:@SECLEVEL=0")
        self.assertRaises(HANDSHAKE_ERRORS, self.handshake, source, ssl.TLSVersion.TLSv1, RSA_KX)

    def test_legacy_listener_never_offers_3des_rc4_or_null(self):
        source = TLSContextSource(tls_listener(self.rsa, tls_min_version="1.0"))
        for weak in ("DES-CBC3-SHA", "NULL-SHA", "ECDHE-RSA-DES-CBC3-SHA"):
            self.assertRaises(HANDSHAKE_ERRORS, self.handshake, source, ssl.TLSVersion.TLSv1, weak + ":@SECLEVEL=0")

    def test_tls_ciphers_replaces_the_suite_list(self):
        source = TLSContextSource(tls_listener(self.rsa, tls_ciphers="ECDHE-RSA-AES256-GCM-SHA384"))
        _, cipher, _ = self.handshake(source, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
        self.assertEqual(cipher, "ECDHE-RSA-AES256-GCM-SHA384")
        self.assertRaises(HANDSHAKE_ERRORS, self.handshake, source, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256")
        # TLS 1.3 suites are OpenSSL's and unaffected
        self.assertEqual(self.handshake(source, ssl.TLSVersion.TLSv1_3, "ALL")[0], "TLSv1.3")

    def test_unusable_tls_ciphers_is_a_start_up_error(self):
        e = self.assertRaises(ConfigError, TLSContextSource, tls_listener(self.rsa, name="mfp", tls_ciphers="NO-SUCH-CIPHER"))
        self.assertEqual(e.key, "listener.mfp.tls_ciphers")
        self.assertNotIn("\n", str(e))

    def test_tls_ciphers_is_a_listener_key(self):
        data = {"listener": [{"name": "mfp", "endpoint": "tcp:25", "tls_ciphers": "ECDHE+AESGCM"}]}
        self.assertEqual(build_config(data, {}, {}, "/tmp").listeners[0].tls_ciphers, "ECDHE+AESGCM")
        self.assertIsNone(build_config({"listener": [{"name": "mfp", "endpoint": "tcp:25"}]}, {}, {}, "/tmp").listeners[0].tls_ciphers)
        e = self.assertRaises(ConfigError, build_config, {"listener": [{"name": "mfp", "endpoint": "tcp:25", "tls_ciphers": "A B"}]},
                              {}, {}, "/tmp")
        self.assertIn("listener.mfp.tls_ciphers", str(e))

    def test_warning_names_rsa_key_exchange_and_an_unsuitable_key(self):
        logs = LogCapture.install(self)
        TLSContextSource(tls_listener(self.rsa, name="printers", tls_min_version="1.0"))
        [warning] = logs.warnings()
        self.assertIn("printers", warning)
        self.assertIn("RSA key exchange", warning)
        self.assertIn("security level 0", warning)
        self.assertNotIn("--key-type rsa", warning)
        ec = self.ca.issue()
        TLSContextSource(tls_listener(ec, name="scanners", tls_min_version="1.0"))
        self.assertIn("EC key", logs.warnings()[1])
        self.assertIn("graphsmtp-certs --key-type rsa", logs.warnings()[1])


class CertsKeyTypeTests(SynchronousTestCase):
    def run_cli(self, *argv):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.cert, self.key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        out, err = io.StringIO(), io.StringIO()
        self.err = err
        return certs_cli.main(["--cert", self.cert, "--key", self.key, "--name", "mfp.test", *argv], stdout=out, stderr=err)

    def key_type(self):
        with open(self.key, "rb") as f:
            return crypto.load_privatekey(crypto.FILETYPE_PEM, f.read()).type()

    def test_rsa_and_default_ecdsa(self):
        self.assertEqual(self.run_cli("--key-type", "rsa"), 0)
        self.assertEqual(self.key_type(), crypto.TYPE_RSA)
        with open(self.key, "rb") as f:
            self.assertEqual(crypto.load_privatekey(crypto.FILETYPE_PEM, f.read()).bits(), 2048)
        TLSContextSource(tls_listener(type("C", (), {"cert_path": self.cert, "key_path": self.key}), tls_min_version="1.0"))
        self.assertEqual(self.run_cli(), 0)
        self.assertEqual(self.key_type(), crypto.TYPE_EC)

    def test_unknown_key_type_is_one_line_usage(self):
        self.assertEqual(self.run_cli("--key-type", "dsa"), certs_cli.EX_USAGE)
        self.assertEqual(self.err.getvalue().count("\n"), 1)


class OldPrinterEndToEndTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_tls10_rsa_kx_printer_delivers_through_starttls(self):
        ca = TestCA.create(self.mktemp())
        cert = ca.issue(key_type="rsa")
        gw = yield start_gateway(self, {"listener": [{
            "name": "printers", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.0/8"],
            "tls": "starttls", "tls_cert": cert.cert_path, "tls_key": cert.key_path, "tls_min_version": "1.0"}]})

        def printer():
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(ca.ca_cert_path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1
            context.set_ciphers(RSA_KX)
            with smtplib.SMTP("127.0.0.1", gw.port(), timeout=10) as client:
                client.ehlo("mfp.test")
                client.starttls(context=context)
                negotiated = (client.sock.version(), client.sock.cipher()[0])
                client.ehlo("mfp.test")
                reply = client.sendmail("scan@corp.example", ["ops@corp.example"], b"Subject: scan\r\n\r\npage 1\r\n")
            return negotiated, reply

        negotiated, refused = yield deferToThread(printer)
        self.assertEqual(negotiated, ("TLSv1", "AES128-SHA"))
        self.assertEqual(refused, {})
        [entry] = yield gw.delivered(1)
        self.assertTrue(entry.provenance.tls)
        self.assertEqual(gw.outbox_messages()[0]["Subject"], "scan")
