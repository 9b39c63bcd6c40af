"""
The shipped systemd unit's sandbox and the daemon's TLS coexist.

``MemoryDenyWriteExecute=yes`` forbids memory that is both writable and executable; cffi's
``ffi.callback()`` (which pyOpenSSL uses for verify/info callbacks) needs exactly that and fails
with ``MemoryError``.  The real daemon is started under the same rule without systemd and must
still do STARTTLS and implicit TLS with a client and deliver through the fake Graph over HTTPS:
under the kernel's own switch, ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`` (Linux >= 6.3),
and under the seccomp filter systemd itself installs (tests/write_execute.py), which every
kernel has, so the test runs on Debian 12's 6.1 too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.harness import send_message
from tests.daemon_helpers import ROOT, kernel_mdwe_support, spawn_gateway, write_private
from tests.write_execute import unsupported

MESSAGE = b"From: scanner@contoso.test\r\nTo: bob@fabrikam.test\r\nSubject: under MDWE\r\n\r\nscan attached\r\n"


class MemoryDenyWriteExecuteTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reason = unsupported()
        if reason:  # another OS or machine: neither the kernel's switch nor the filter is there
            self.skipTest(reason)

    def test_starttls_and_graph_delivery_under_mdwe(self):
        """The kernel's switch where this kernel has it, else systemd's filter."""
        return self._deliver_under("seccomp" if kernel_mdwe_support() else "prctl")

    def test_starttls_and_graph_delivery_under_systemds_filter(self):
        return self._deliver_under("seccomp")

    @inlineCallbacks
    def _deliver_under(self, sandbox: str):
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
        daemon = spawn_gateway(self, config, mdwe=sandbox)
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


class WriteExecuteFilterTests(TestCase):
    """The filter must refuse what systemd's does, or the delivery test above would pass vacuously."""

    def setUp(self) -> None:
        reason = unsupported()
        if reason:
            self.skipTest(reason)

    def test_writable_executable_memory_is_refused_and_nothing_else(self):
        script = textwrap.dedent("""\
            import mmap
            from tests.write_execute import deny_write_execute
            def try_map(prot):
                try:
                    mmap.mmap(-1, 4096, prot=prot).close()
                    return "allowed"
                except PermissionError:
                    return "refused"
            print("before", try_map(mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
            deny_write_execute()
            print("rw", try_map(mmap.PROT_READ | mmap.PROT_WRITE))
            print("rx", try_map(mmap.PROT_READ | mmap.PROT_EXEC))
            print("rwx", try_map(mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
            """)
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split("\n"), ["before allowed", "rw allowed", "rx allowed", "rwx refused", ""])
