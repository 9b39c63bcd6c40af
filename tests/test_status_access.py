"""
Who may read the status endpoint: loopback by default; with ``login = true`` HTTP Basic against
the users file (twisted.cred), over TLS when the endpoint is not loopback — Basic over plain
HTTP beyond loopback is refused when the configuration is read.
"""

from __future__ import annotations

import base64
import os

import treq
from twisted.internet import reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.config.status import bind_facts
from gateway.testing.certs import TestCA
from gateway.testing.harness import start_gateway
from tests.auth_helpers import make_users_file
from tests.status_helpers import get, http_client, read_page


def basic(login: str, password: str) -> dict:
    token = base64.b64encode(f"{login}:{password}".encode()).decode()
    return {"Authorization": [f"Basic {token}"]}


class StatusConfigTests(SynchronousTestCase):
    def config(self, status, auth=None):
        data = {"status": status}
        if auth is not None:
            data["auth"] = auth
        return build_config(data, {}, {}, os.path.abspath(self.mktemp()))

    def users(self):
        path = os.path.abspath(self.mktemp())
        return make_users_file(path, {"admin": ("s3cret-pw", ("*",))})

    def test_basic_over_plain_http_beyond_loopback_is_refused(self):
        users = self.users()
        for endpoint in ("tcp:8025", "tcp:8025:interface=0.0.0.0", "tcp6:8025:interface=\\:\\:",
                         "tcp:8025:interface=192.0.2.10", "systemd:domain=INET:index=0"):
            e = self.assertRaises(ConfigError, self.config, {"endpoint": endpoint, "login": True, "users_file": users})
            self.assertEqual(e.key, "status.login", endpoint)
            self.assertIn("in clear", str(e))

    def test_basic_on_loopback_or_over_tls_is_accepted(self):
        users = self.users()
        for endpoint in ("tcp:8025:interface=127.0.0.1", "tcp6:8025:interface=\\:\\:1",
                         "ssl:8443:privateKey=/k.pem:certKey=/c.pem", "unix:/run/graphsmtp/status.sock"):
            config = self.config({"endpoint": endpoint, "login": True, "users_file": users})
            self.assertTrue(config.status.login, endpoint)

    def test_login_uses_the_auth_users_file_by_default(self):
        users = self.users()
        config = self.config({"endpoint": "tcp:8025:interface=127.0.0.1", "login": True}, auth={"users_file": users})
        self.assertEqual(config.status.users_file, users)

    def test_login_without_any_users_file_is_refused(self):
        e = self.assertRaises(ConfigError, self.config, {"endpoint": "tcp:8025:interface=127.0.0.1", "login": True})
        self.assertEqual(e.key, "status.login")

    def test_defaults(self):
        status = self.config({"endpoint": "tcp:8025:interface=127.0.0.1"}).status
        self.assertEqual((status.login, status.refresh, status.recent, status.queue_scan_limit), (False, 30, 50, 2000))

    def test_bind_facts(self):
        self.assertEqual((bind_facts("tcp:1:interface=127.0.0.1").local, bind_facts("tcp:1").local), (True, False))
        self.assertTrue(bind_facts("tcp6:1:interface=\\:\\:1").local)
        self.assertTrue(bind_facts("ssl:1:privateKey=k").tls)
        self.assertFalse(bind_facts("haproxy:tcp:1:interface=127.0.0.1").local)


class StatusLoginTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, endpoint):
        users = make_users_file(os.path.abspath(self.mktemp()), {"admin": ("s3cret-pw", ("*",))})
        self.gw = yield start_gateway(self, {
            "status": {"endpoint": endpoint, "login": True, "users_file": users, "refresh": 0},
        })
        port = yield self.gw.status_port()
        return port

    @inlineCallbacks
    def check_login(self, client, base):
        response, _ = yield get(client, base + "/")
        self.assertEqual(response.code, 401)
        self.assertTrue(response.headers.getRawHeaders(b"www-authenticate")[0].lower().startswith(b"basic "))
        response, body = yield get(client, base + "/", headers=basic("admin", "wrong"))
        self.assertEqual(response.code, 401)
        self.assertNotIn(b"listeners", body)
        response, _ = yield get(client, base + "/metrics")
        self.assertEqual(response.code, 401)
        response, body = yield get(client, base + "/", headers=basic("admin", "s3cret-pw"))
        self.assertEqual(response.code, 200)
        self.assertEqual(read_page(body).rows("listeners")[0]["name"], "default")
        self.assertNotIn(b"s3cret-pw", body)
        response, body = yield get(client, base + "/metrics", headers=basic("admin", "s3cret-pw"))
        self.assertEqual(response.code, 200)
        self.assertIn(b"graphsmtp_queue_messages", body)

    @inlineCallbacks
    def test_basic_login_on_loopback(self):
        port = yield self.start("tcp:0:interface=127.0.0.1")
        yield self.check_login(http_client(self), f"http://127.0.0.1:{port}")

    @inlineCallbacks
    def test_basic_login_over_tls(self):
        ca = TestCA.create(os.path.abspath(self.mktemp()))
        issued = ca.issue(("localhost", "127.0.0.1"))
        port = yield self.start(f"ssl:0:interface=127.0.0.1:privateKey={issued.key_path}:certKey={issued.cert_path}")
        with open(ca.ca_cert_path, "rb") as f:
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(f.read())])
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = treq.client.HTTPClient(Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust), pool=pool))
        yield self.check_login(client, f"https://127.0.0.1:{port}")
