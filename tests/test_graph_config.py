"""The [graph] section: clouds, overrides, credentials from every source, and clear errors."""

from __future__ import annotations

import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError
from gateway.config.graph import CLOUDS, parse_graph_section
from gateway.config.loader import build_config
from gateway.config.reader import TableReader
from gateway.delivery.graph.sizes import max_message_size, single_request_limit
from gateway.testing.fake_graph import create_client_certificate

SECRET = "s3cr3t-value-never-shown"


def parse(table: dict, environ: dict | None = None):
    return parse_graph_section(TableReader(table, "graph"), environ or {}, os.path.abspath)


def base(**extra):
    table = {"tenant_id": "contoso.onmicrosoft.com", "client_id": "app-id", "client_secret": SECRET}
    table.update(extra)
    return table


class CloudTests(SynchronousTestCase):
    def test_global_defaults(self):
        c = parse(base())
        self.assertEqual(c.authority, "https://login.microsoftonline.com/contoso.onmicrosoft.com")
        self.assertEqual(c.graph_url, "https://graph.microsoft.com")
        self.assertEqual(c.scope, "https://graph.microsoft.com/.default")
        self.assertEqual((c.send_as, c.hidden_recipients, c.mailbox_concurrency, c.mailbox_rate), ("header-from", "bcc-header", 2, 30.0))

    def test_each_cloud_selects_login_and_graph_hosts(self):
        expected = {
            "usgov": ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
            "usgovdod": ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
            "china": ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
        }
        for cloud, (login, graph) in expected.items():
            c = parse(base(cloud=cloud))
            self.assertEqual(c.authority, f"{login}/contoso.onmicrosoft.com")
            self.assertEqual(c.graph_url, graph)
        self.assertEqual(set(CLOUDS), {"global", "usgov", "usgovdod", "china"})

    def test_explicit_authority_and_graph_url_override_the_cloud(self):
        c = parse(base(cloud="china", authority="https://127.0.0.1:8443/", graph_url="https://127.0.0.1:9443/"))
        self.assertEqual(c.authority, "https://127.0.0.1:8443/contoso.onmicrosoft.com")
        self.assertEqual(c.graph_url, "https://127.0.0.1:9443")
        c = parse(base(authority="https://login.example/other-tenant"))
        self.assertEqual(c.authority, "https://login.example/other-tenant")

    def test_plain_http_is_refused(self):
        e = self.assertRaises(ConfigError, parse, base(graph_url="http://graph.example"))
        self.assertEqual(e.key, "graph.graph_url")
        self.assertRaises(ConfigError, parse, base(authority="http://login.example/t"))

    def test_unknown_cloud(self):
        e = self.assertRaises(ConfigError, parse, base(cloud="mars"))
        self.assertIn("global", str(e))


class CredentialTests(SynchronousTestCase):
    def test_secret_never_in_repr(self):
        c = parse(base())
        self.assertEqual(c.client_secret.reveal(), SECRET)
        self.assertNotIn(SECRET, repr(c))

    def test_secret_from_env_and_file(self):
        table = base()
        del table["client_secret"]
        c = parse(dict(table, client_secret_env="GRAPH_SECRET"), {"GRAPH_SECRET": SECRET})
        self.assertEqual(c.client_secret.reveal(), SECRET)
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, SECRET.encode() + b"\n")
        os.close(fd)
        c = parse(dict(table, client_secret_file=path))
        self.assertEqual(c.client_secret.reveal(), SECRET)
        os.chmod(path, 0o644)
        e = self.assertRaises(ConfigError, parse, dict(table, client_secret_file=path))
        self.assertIn("chmod 600", str(e))

    def test_no_credential_and_two_credentials(self):
        table = base()
        del table["client_secret"]
        e = self.assertRaises(ConfigError, parse, table)
        self.assertIn("set one credential", str(e))
        e = self.assertRaises(ConfigError, parse, base(client_assertion_file="/var/run/token"))
        self.assertIn("only one credential", str(e))

    def test_required_ids(self):
        e = self.assertRaises(ConfigError, parse, {"client_id": "x", "client_secret": "y"})
        self.assertEqual(e.key, "graph.tenant_id")

    def test_certificate_thumbprint_computed(self):
        cert = create_client_certificate(self.mktemp())
        with open(cert.key_path) as f:
            key_pem = f.read()
        table = base(certificate=cert.cert_path, certificate_key=key_pem, send_x5c=True)
        del table["client_secret"]
        c = parse(table)
        der = x509.load_pem_x509_certificate(cert.cert_pem).public_bytes(serialization.Encoding.DER)
        self.assertEqual(c.certificate.thumbprint, hashlib.sha1(der).hexdigest().upper())
        self.assertTrue(c.certificate.send_x5c)
        self.assertNotIn("PRIVATE KEY", repr(c))

    def test_encrypted_key_needs_its_passphrase(self):
        cert = create_client_certificate(self.mktemp(), passphrase=b"open sesame")
        table = base(certificate=cert.cert_path, certificate_key_file=cert.key_path)
        del table["client_secret"]
        e = self.assertRaises(ConfigError, parse, table)
        self.assertNotIn("BEGIN", str(e))
        c = parse(dict(table, certificate_passphrase_env="PASS"), {"PASS": "open sesame"})
        self.assertEqual(c.certificate.passphrase.reveal(), "open sesame")

    def test_key_of_another_certificate_is_refused(self):
        one = create_client_certificate(self.mktemp())
        other = create_client_certificate(self.mktemp())
        table = base(certificate=one.cert_path, certificate_key_file=other.key_path)
        del table["client_secret"]
        e = self.assertRaises(ConfigError, parse, table)
        self.assertIn("does not belong", str(e))


class OptionTests(SynchronousTestCase):
    def test_send_as_modes(self):
        self.assertEqual(parse(base(send_as="envelope-from")).send_as, "envelope-from")
        self.assertEqual(parse(base(send_as="relay@contoso.test")).send_as, "relay@contoso.test")
        e = self.assertRaises(ConfigError, parse, base(send_as="whoever"))
        self.assertEqual(e.key, "graph.send_as")

    def test_limits(self):
        self.assertRaises(ConfigError, parse, base(mailbox_concurrency=5))
        self.assertRaises(ConfigError, parse, base(upload_chunk_size="5MB"))
        self.assertRaises(ConfigError, parse, base(mailbox_rate=0))
        c = parse(base(mailbox_concurrency=4, mailbox_rate=10, max_request_size="3MB", request_timeout="2m"))
        self.assertEqual((c.mailbox_concurrency, c.mailbox_rate, c.max_request_size, c.request_timeout), (4, 10.0, 3_000_000, 120.0))

    def test_dsn_needs_postmaster(self):
        e = self.assertRaises(ConfigError, parse, base(dsn=True))
        self.assertIn("postmaster", str(e))
        self.assertTrue(parse(base(dsn=True, postmaster="postmaster@contoso.test")).dsn)

    def test_typo_is_an_error(self):
        e = self.assertRaises(ConfigError, parse, base(sendas="x"))
        self.assertEqual(e.key, "graph.sendas")

    def test_loader_switches_to_graph(self):
        config = build_config({"graph": base()}, {}, {}, "/tmp")
        self.assertEqual(config.deliverer, "graph")
        self.assertEqual(config.graph.client_id, "app-id")


class SizeTests(SynchronousTestCase):
    def test_large_path_on_allows_exchange_maximum(self):
        self.assertEqual(max_message_size(parse(base())), 35_000_000)

    def test_large_path_off_caps_to_one_request(self):
        c = parse(base(large_messages=False))
        limit = max_message_size(c)
        self.assertEqual(limit, single_request_limit(c))
        # base64 of the largest allowed message plus headroom still fits one request.
        self.assertLessEqual(4 * ((limit + 64 * 1024 + 2) // 3), c.max_request_size)
        self.assertGreater(limit, 2_500_000)


# graph.https_proxy with credentials.  The proxy password must never be echoed in a
# configuration error, and credentials in the URL are refused at start-up: the CONNECT tunnel
# Graph traffic uses never sends them, so they would only produce endless 407 retries.
PASSWORD = "proxy-pw-never-shown"


def parse_with_proxy(**extra):
    table = {"tenant_id": "contoso.onmicrosoft.com", "client_id": "app-id", "client_secret": "s"}
    table.update(extra)
    return parse_graph_section(TableReader(table, "graph"), {}, os.path.abspath)


class ProxyCredentialTests(SynchronousTestCase):
    def test_wrong_scheme_error_does_not_echo_the_password(self):
        error = self.assertRaises(ConfigError, parse_with_proxy, https_proxy=f"https://user:{PASSWORD}@proxy.test:8080")
        self.assertNotIn(PASSWORD, str(error))
        self.assertIn("https_proxy", str(error))

    def test_credentials_in_the_proxy_url_are_refused_without_echo(self):
        error = self.assertRaises(ConfigError, parse_with_proxy, https_proxy=f"http://user:{PASSWORD}@proxy.test:3128")
        self.assertNotIn(PASSWORD, str(error))
        self.assertIn("https_proxy", str(error))

    def test_plain_proxy_still_accepted(self):
        self.assertEqual(parse_with_proxy(https_proxy="http://proxy.test:3128").https_proxy, "http://proxy.test:3128")
