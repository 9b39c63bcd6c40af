"""
The shipped systemd unit's sandbox and the daemon's TLS coexist.

``MemoryDenyWriteExecute=yes`` forbids memory that is both writable and executable; cffi's
``ffi.callback()`` (which pyOpenSSL uses for verify/info callbacks) needs exactly that and fails
with ``MemoryError``.  The kernel's own switch, ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``,
imposes the same rule without systemd, so the real daemon is started under it here and must
still do STARTTLS with a client and deliver through the fake Graph over HTTPS.
"""

from __future__ import annotations

import os
import textwrap

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.harness import send_message
from tests.daemon_helpers import kernel_mdwe_support, spawn_gateway, write_private

MESSAGE = b"From: scanner@contoso.test\r\nTo: bob@fabrikam.test\r\nSubject: under MDWE\r\n\r\nscan attached\r\n"


class MemoryDenyWriteExecuteTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = kernel_mdwe_support()
        if reason:
            self.skipTest(reason)

    @inlineCallbacks
    def test_starttls_and_graph_delivery_under_mdwe(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        fake = yield start_fake_graph(reactor, os.path.join(directory, "fake"))
        self.addCleanup(fake.stop)
        issued = fake.ca.issue(basename="smtp")
        secret = write_private(os.path.join(directory, "client-secret"), fake.client_secret)
        config = os.path.join(directory, "graphsmtp.toml")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                [gateway]
                state_dir = "{directory}/state"
                hostname = "mdwe.test"
                [queue]
                retry_schedule = ["1s"]
                jitter = 0.0
                [[listener]]
                name = "submission"
                endpoint = "tcp:0:interface=127.0.0.1"
                tls = "starttls"
                tls_cert = "{issued.cert_path}"
                tls_key = "{issued.key_path}"
                trusted_networks = ["127.0.0.0/8"]
                [[listener]]
                name = "smtps"
                endpoint = "tcp:0:interface=127.0.0.1"
                tls = "implicit"
                tls_cert = "{issued.cert_path}"
                tls_key = "{issued.key_path}"
                trusted_networks = ["127.0.0.0/8"]
                [graph]
                tenant_id = "{fake.tenant_id}"
                client_id = "{fake.client_id}"
                client_secret_file = "{secret}"
                authority = "{fake.authority}"
                graph_url = "{fake.graph_url}"
                ca_bundle = "{fake.ca_path}"
                """))
        sent: Deferred = Deferred()
        fake.on_sent.append(lambda message: sent.called or sent.callback(message))
        daemon = spawn_gateway(self, config, mdwe=True)
        yield daemon.wait_for(rb"MDWE state 1")
        port = yield daemon.listening_port("submission")
        code, _ = yield send_message(port, "scanner@contoso.test", ["bob@fabrikam.test"], MESSAGE,
                                     starttls=True, ca_path=fake.ca_path)
        self.assertEqual(code, 250)
        message = yield sent
        self.assertEqual(message.recipients, {"bob@fabrikam.test"})
        implicit = yield daemon.listening_port("smtps")  # port 465 style: TLS from the first byte
        code, _ = yield send_message(implicit, "scanner@contoso.test", ["carol@fabrikam.test"], MESSAGE,
                                     implicit_tls=True, ca_path=fake.ca_path)
        self.assertEqual(code, 250)
        self.assertNotIn(b"write+execute", daemon.output)
        yield daemon.stop()
        self.assertNotIn(b"Traceback", daemon.output, daemon.output.decode("utf-8", "replace"))
