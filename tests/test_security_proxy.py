"""
PROXY protocol (Twisted's ``haproxy:`` endpoint): the address in the header decides trust, and a
listener not configured for PROXY treats such a header as the garbage it is.  The headers are
sent by hand over a raw socket, exactly as HAProxy's ``send-proxy``/``send-proxy-v2`` would.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.auth.throttle import ThrottleSettings
from gateway.testing.logs import LogCapture
from tests.security_harness import (
    ALICE_PASSWORD,
    HOST,
    RawClient,
    SecureServer,
    ehlo_keywords,
)

TRUSTED = (ipaddress.ip_network("203.0.113.0/24"),)


def proxy_v1(source: str, port: int = 40000) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 25\r\n".encode("ascii")


def proxy_v2(source: str, port: int = 40000) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 25)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def mail_attempt(port: int, preamble: bytes, context=None) -> tuple:
    c = RawClient(port)
    try:
        c.send(preamble)
        if context is not None:
            c.starttls(context)
        banner = c.reply()
        ehlo = c.command("EHLO device.test")
        mail = c.command("MAIL FROM:<printer@corp.example>")
        c.command("QUIT")
        return banner, ehlo, mail
    finally:
        c.close()


class ProxyProtocolTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def start(self, endpoint, **kwargs):
        options = dict(name="behind-lb", endpoint=endpoint, tls="none", auth="none", trusted_networks=TRUSTED)
        options.update(kwargs)
        server = yield SecureServer.start(self, **options)
        return server

    @inlineCallbacks
    def test_proxied_trusted_address_may_relay(self):
        server = yield self.start(f"haproxy:tcp:0:interface={HOST}")
        for header in (proxy_v1("203.0.113.9"), proxy_v2("203.0.113.9")):
            banner, _, mail = yield deferToThread(mail_attempt, server.port, header)
            self.assertEqual(banner[0], 220)
            self.assertEqual(mail[0], 250, header)
        yield server.sessions_closed()

    @inlineCallbacks
    def test_proxied_untrusted_address_refused(self):
        logs = LogCapture.install(self)
        server = yield self.start(f"haproxy:tcp:0:interface={HOST}", trusted_networks=TRUSTED + (ipaddress.ip_network("127.0.0.0/8"),))
        # loopback (the load balancer itself) is trusted, but the client behind it is not
        _, _, mail = yield deferToThread(mail_attempt, server.port, proxy_v1("198.51.100.7"))
        self.assertEqual(mail[0], 554)
        self.assertIn("5.7.1", mail[1][0])
        yield server.sessions_closed()
        # the refusal is logged under the real client's address, not the load balancer's
        refusals = [e for e in logs.events if str(e.get("what", "")).startswith("MAIL FROM")]
        self.assertEqual([e["client"] for e in refusals], ["198.51.100.7"])

    @inlineCallbacks
    def test_proxy_listener_drops_clients_without_header(self):
        server = yield self.start(f"haproxy:tcp:0:interface={HOST}")

        def client():
            c = RawClient(server.port)
            try:
                c.send(b"EHLO direct.test\r\nMAIL FROM:<printer@corp.example>\r\n")
                return c.reply(), c.closed()
            finally:
                c.close()

        (code, lines), closed = yield deferToThread(client)
        self.assertNotEqual(code, 250)
        self.assertTrue(closed)
        yield server.sessions_closed()

    @inlineCallbacks
    def test_plain_listener_ignores_proxy_header(self):
        server = yield self.start(f"tcp:0:interface={HOST}")

        def client():
            c = RawClient(server.port)
            try:
                c.reply()
                header = c.command(proxy_v1("203.0.113.9").decode().strip())
                c.command("EHLO device.test")
                mail = c.command("MAIL FROM:<printer@corp.example>")
                c.command("QUIT")
                return header, mail
            finally:
                c.close()

        header, mail = yield deferToThread(client)
        self.assertEqual(header[0], 500)
        # the claimed 203.0.113.9 did not make the loopback client trusted
        self.assertEqual(mail[0], 554)
        yield server.sessions_closed()

    @inlineCallbacks
    def test_implicit_tls_behind_proxy_header_in_cleartext(self):
        """HAProxy sends the header before the ClientHello: TLS must sit inside the PROXY parser."""
        server = yield self.start(f"haproxy:tcp:0:interface={HOST}", tls="implicit", auth="optional")
        banner, ehlo, mail = yield deferToThread(mail_attempt, server.port, proxy_v1("203.0.113.9"), server.client_context())
        self.assertEqual(banner[0], 220)
        self.assertIn("AUTH", ehlo_keywords(ehlo[1]))
        self.assertEqual(mail[0], 250)
        yield server.sessions_closed()

    @inlineCallbacks
    def test_login_throttle_counts_the_real_client(self):
        import base64
        server = yield self.start(
            f"haproxy:tcp:0:interface={HOST}", auth="optional", allow_plaintext_auth=True,
            throttle=ThrottleSettings(max_failures=2, base_delay=0, max_delay=0),
        )

        def logins(source, *passwords):
            c = RawClient(server.port)
            try:
                c.send(proxy_v1(source))
                c.reply()
                c.command("EHLO device.test")
                codes = []
                for password in passwords:
                    token = base64.b64encode(f"\0alice\0{password}".encode()).decode()
                    code, _ = c.command("AUTH PLAIN " + token)
                    codes.append(code)
                    if code in (0, 421):
                        break
                return codes
            finally:
                c.close()

        self.assertEqual((yield deferToThread(logins, "203.0.113.9", "x1", "x2")), [535, 421])
        # another client behind the same load balancer is not locked out
        self.assertEqual((yield deferToThread(logins, "203.0.113.10", ALICE_PASSWORD)), [235])
        self.assertEqual((yield deferToThread(logins, "203.0.113.9", ALICE_PASSWORD)), [421])
        yield server.sessions_closed()
