"""
Operating the running gateway: SIGTERM lets a message already in DATA finish (and refuses new
ones), SIGHUP picks up a renewed certificate for new sessions.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.service import GatewayOptions, makeService
from gateway.testing.certs import TestCA
from gateway.testing.harness import gateway_config, start_gateway


def read_reply(sock: socket.socket) -> bytes:
    """One complete (possibly multi-line) SMTP reply."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


class GracefulStopTests(TestCase):
    @inlineCallbacks
    def test_message_in_data_finishes_while_stopping(self):
        gw = yield start_gateway(self)
        sock = yield deferToThread(socket.create_connection, ("127.0.0.1", gw.port()), 10)
        self.addCleanup(sock.close)

        def start_transaction() -> bytes:
            read_reply(sock)
            for command in (b"EHLO client.test", b"MAIL FROM:<a@corp.example>", b"RCPT TO:<b@corp.example>", b"DATA"):
                sock.sendall(command + b"\r\n")
                reply = read_reply(sock)
            sock.sendall(b"Subject: in flight\r\n\r\nfirst half\r\n")
            return reply

        reply = yield deferToThread(start_transaction)
        self.assertTrue(reply.startswith(b"354"), reply)

        stopping = gw.stop()
        self.assertFalse(stopping.called)  # waits for the open transaction

        def finish() -> bytes:
            sock.sendall(b"second half\r\n.\r\n")
            return read_reply(sock)

        final = yield deferToThread(finish)
        self.assertTrue(final.startswith(b"250 2.0.0"), final)
        yield stopping
        # A message answered 250 during shutdown is in the spool, safe for the next start.
        queue = os.path.join(gw.config.spool.directory, "queue")
        queued = [n for n in os.listdir(queue) if n.endswith(".msg")]
        delivered = gw.outbox_messages()
        self.assertEqual(len(queued) + len(delivered), 1)


class CertificateReloadTests(TestCase):
    @inlineCallbacks
    def test_sighup_serves_the_renewed_certificate(self):
        ca = TestCA.create(os.path.abspath(self.mktemp()))
        first = ca.issue(basename="old")
        cert_path = os.path.join(ca.directory, "live.pem")
        key_path = os.path.join(ca.directory, "live.key")
        shutil.copy(first.cert_path, cert_path)
        shutil.copy(first.key_path, key_path)
        config = gateway_config(self, {"listener": [{
            "name": "sub", "endpoint": "tcp:0:interface=127.0.0.1", "tls": "implicit",
            "tls_cert": cert_path, "tls_key": key_path, "trusted_networks": ["127.0.0.1/32"],
        }]})
        service = makeService(GatewayOptions(config, install_signal_handlers=True), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        port = (yield service.components.listeners[0].service.when_listening()).getHost().port

        def served_certificate() -> bytes:
            context = ssl.create_default_context(cafile=ca.ca_cert_path)
            with socket.create_connection(("127.0.0.1", port), 10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    der = tls.getpeercert(binary_form=True)
                    tls.recv(1024)  # the 220 greeting
                    tls.sendall(b"QUIT\r\n")
                    tls.recv(1024)
                    return der

        before = yield deferToThread(served_certificate)
        self.assertEqual(before, ssl.PEM_cert_to_DER_cert(first.cert_pem.decode()))

        renewed = ca.issue(basename="new")
        shutil.copy(renewed.cert_path, cert_path)
        shutil.copy(renewed.key_path, key_path)
        reloaded: Deferred = Deferred()
        original = service.reload
        service.reload = lambda: (original(), reloaded.callback(None))
        os.kill(os.getpid(), signal.SIGHUP)
        yield reloaded

        after = yield deferToThread(served_certificate)
        self.assertEqual(after, ssl.PEM_cert_to_DER_cert(renewed.cert_pem.decode()))


class RecoveryFailureTests(TestCase):
    @inlineCallbacks
    def test_second_gateway_on_a_locked_spool_stops_listening(self):
        first = yield start_gateway(self)
        built = []

        ports = []

        def no_waiting(components):
            components.spool.disk.lock_wait = 0.0
            built.append(components)
            components.listeners[0].service.when_listening().addCallback(lambda p: ports.append(p.getHost().port))

        second_config = gateway_config(self, {
            "spool": {"directory": first.config.spool.directory},
            "listener": [{"name": "default", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.0/8"]}],
        })
        failure = yield self.assertFailure(start_gateway(self, second_config, prepare=no_waiting), Exception)
        self.assertIn("in use by another graphsmtp process", str(failure))
        from gateway.spool.disk import SpoolBusy
        self.assertTrue(self.flushLoggedErrors(SpoolBusy))
        [components] = built
        self.assertFalse(components.listeners[0].service.running)
        [port] = ports
        refused = yield self.assertFailure(
            deferToThread(socket.create_connection, ("127.0.0.1", port), 5), ConnectionRefusedError
        )
        self.assertIsNotNone(refused)
