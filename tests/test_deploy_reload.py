"""
SIGHUP reloads the configuration, not only certificates: trusted networks and senders, limits,
policies, the users file and observers of the running listeners are rebuilt and swapped in for
new sessions; a bad file keeps the running configuration with one log line; what needs a new
socket is reported as needing a restart.
"""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import textwrap

import bcrypt
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.config import load_config
from gateway.config.users import UserRecord, write_users
from gateway.reload import restart_needed
from gateway.service import GatewayOptions, makeService
from gateway.testing.certs import TestCA
from gateway.testing.harness import send_message
from gateway.testing.logs import LogCapture
from tests.daemon_helpers import spawn_gateway

MESSAGE = b"From: app@corp.example\r\nTo: bob@corp.example\r\nSubject: reload\r\n\r\nbody\r\n"
PASSWORD = "reload test password"


def config_text(directory: str, trusted: str = "10.0.0.0/8", listener_extra: str = "", extra: str = "",
                endpoint: str = "tcp:0:interface=127.0.0.1") -> str:
    return textwrap.dedent(f"""\
        [gateway]
        state_dir = "{directory}/state"
        hostname = "reload.test"
        [queue]
        retry_schedule = ["1s"]
        jitter = 0.0
        [[listener]]
        name = "mx"
        endpoint = "{endpoint}"
        trusted_networks = ["{trusted}"]
        allow_plaintext_auth = true
        """) + listener_extra + extra


def relay(port: int, sender: str = "app@corp.example", login=None):
    """Fires with the DATA reply code, or the refusal code."""
    message = MESSAGE.replace(b"From: app@corp.example", b"From: " + sender.encode())
    d = send_message(port, sender, ["bob@corp.example"], message, login=login)

    def refused(failure):
        error = failure.value
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            return list(error.recipients.values())[0][0]
        if isinstance(error, (smtplib.SMTPSenderRefused, smtplib.SMTPResponseException)):
            return error.smtp_code
        if isinstance(error, smtplib.SMTPAuthenticationError):
            return error.smtp_code
        return failure

    return d.addCallbacks(lambda reply: reply[0], refused)


class ReloadInProcessTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, text: str, users: bool = False):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        if users:
            for name, login in (("users-a.jsonl", "alice"), ("users-b.jsonl", "bob")):
                hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
                write_users(os.path.join(self.directory, name), [UserRecord(login, hashed, ("*",), False)])
        self.path = os.path.join(self.directory, "graphsmtp.toml")
        self.write(text.replace("@DIR@", self.directory))
        self.log_capture = LogCapture.install(self)
        config = load_config(self.path)
        self.service = makeService(GatewayOptions(config, reload_config=lambda: load_config(self.path),
                                                  install_signal_handlers=False), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.part = self.service.components.listeners[0]
        self.port = (yield self.part.service.when_listening()).getHost().port
        yield self.service.components.runner.ready

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text.replace("@DIR@", getattr(self, "directory", "")))

    def lines(self, fragment: str) -> list[str]:
        return [line for line in self.log_capture.messages() if fragment in line]

    @inlineCallbacks
    def test_trusted_networks_apply_to_new_sessions_only(self):
        yield self.start(config_text("@DIR@"))
        self.assertEqual((yield relay(self.port)), 554)
        # A session opened before the reload keeps the settings it started with.
        old = yield deferToThread(smtplib.SMTP, "127.0.0.1", self.port, timeout=10)
        self.addCleanup(lambda: deferToThread(old.close))
        yield deferToThread(old.ehlo, "old.test")
        self.write(config_text(self.directory, trusted="127.0.0.0/8"))
        self.service.reload()
        self.assertEqual((yield relay(self.port)), 250)
        code, _ = yield deferToThread(old.mail, "app@corp.example")
        if code < 400:
            code, _ = yield deferToThread(old.rcpt, "bob@corp.example")
        self.assertEqual(code, 554)
        yield deferToThread(old.quit)
        self.assertEqual(len(self.lines("configuration reloaded")), 1)

    @inlineCallbacks
    def test_bad_file_keeps_the_running_configuration(self):
        yield self.start(config_text("@DIR@", trusted="127.0.0.0/8"))
        self.write(config_text(self.directory, trusted="127.0.0.0/8", listener_extra='max_recipents = 5\n'))
        self.service.reload()
        [line] = self.lines("NOT reloaded")
        self.assertIn("listener.mx.max_recipents: unknown setting", line)
        self.assertIn(self.path, line)
        self.assertEqual((yield relay(self.port)), 250)
        self.write("this is [not toml")
        self.service.reload()
        self.assertEqual(len(self.lines("NOT reloaded")), 2)
        self.assertEqual((yield relay(self.port)), 250)

    @inlineCallbacks
    def test_limits_policies_and_trusted_senders_are_rebuilt(self):
        yield self.start(config_text("@DIR@", trusted="127.0.0.0/8"))
        self.assertEqual((yield relay(self.port, "other@corp.example")), 250)
        self.write(config_text(self.directory, trusted="127.0.0.0/8", listener_extra=(
            'trusted_senders = ["app@corp.example", "other@corp.example"]\n'
            'policies = [ { use = "sender-allowlist", allow = ["app@corp.example"] } ]\n'
            '[listener.limits]\nmax_recipients = 7\n')))
        self.service.reload()
        self.assertEqual(self.part.factory.listener.limits.max_recipients, 7)
        self.assertEqual((yield relay(self.port, "app@corp.example")), 250)
        code = yield relay(self.port, "other@corp.example")
        self.assertTrue(500 <= code < 600, code)
        self.write(config_text(self.directory, trusted="127.0.0.0/8",
                               listener_extra='trusted_senders = ["other@corp.example"]\n'))
        self.service.reload()
        self.assertEqual((yield relay(self.port, "other@corp.example")), 250)
        self.assertEqual((yield relay(self.port, "app@corp.example")), 550)

    @inlineCallbacks
    def test_users_file_and_observers_are_rebuilt(self):
        yield self.start(config_text("@DIR@", trusted="10.0.0.0/8", listener_extra='auth = "optional"\n',
                                     extra='[auth]\nusers_file = "@DIR@/users-a.jsonl"\n'), users=True)
        self.assertEqual((yield relay(self.port, login=("alice", PASSWORD))), 250)
        log = os.path.join(self.directory, "deliveries.jsonl")
        self.write(config_text(self.directory, trusted="10.0.0.0/8", listener_extra='auth = "optional"\n',
                               extra=f'[auth]\nusers_file = "{self.directory}/users-b.jsonl"\n'
                                     f'[[observer]]\nuse = "json-log"\npath = "{log}"\n'))
        self.service.reload()
        self.assertEqual((yield relay(self.port, login=("alice", PASSWORD))), 535)
        self.assertEqual((yield relay(self.port, login=("bob", PASSWORD))), 250)
        # The [[observer]] ones are swapped; the gateway's own (status page, metrics) stay.
        [observer] = self.service.components.configured_observers
        self.assertEqual(observer.name, "json-log")
        self.assertIn(observer, self.service.components.runner.observers)
        self.assertTrue(os.path.exists(log))  # opened by the reload, not at the first delivery

    @inlineCallbacks
    def test_changed_endpoint_is_reported_as_needing_a_restart(self):
        yield self.start(config_text("@DIR@", trusted="127.0.0.0/8"))
        self.write(config_text(self.directory, trusted="127.0.0.0/8", endpoint="tcp:2526:interface=127.0.0.1"))
        self.service.reload()
        [line] = self.lines("restart graphsmtp")
        self.assertIn("listener mx endpoint changed (tcp:0:interface=127.0.0.1 -> tcp:2526:interface=127.0.0.1)", line)
        self.assertEqual(self.part.config.endpoint, "tcp:0:interface=127.0.0.1")
        self.assertEqual((yield relay(self.port)), 250)


class ReloadCertificateFilesTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_changed_certificate_paths_apply_to_new_sessions(self):
        directory = os.path.abspath(self.mktemp())
        ca = TestCA.create(os.path.join(directory, "ca"))
        first, second = ca.issue(basename="first"), ca.issue(basename="second")
        path = os.path.join(directory, "graphsmtp.toml")

        def write(issued):
            with open(path, "w") as f:
                f.write(config_text(directory, trusted="127.0.0.0/8", listener_extra=(
                    f'tls = "starttls"\ntls_cert = "{issued.cert_path}"\ntls_key = "{issued.key_path}"\n')))

        write(first)
        service = makeService(GatewayOptions(load_config(path), reload_config=lambda: load_config(path),
                                             install_signal_handlers=False), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        port = (yield service.components.listeners[0].service.when_listening()).getHost().port

        def served() -> bytes:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=ssl.create_default_context(cafile=ca.ca_cert_path))
                return client.sock.getpeercert(binary_form=True)

        self.assertEqual((yield deferToThread(served)), ssl.PEM_cert_to_DER_cert(first.cert_pem.decode()))
        write(second)
        service.reload()
        self.assertEqual((yield deferToThread(served)), ssl.PEM_cert_to_DER_cert(second.cert_pem.decode()))


class RestartNeededTests(TestCase):
    def test_what_a_reload_cannot_apply(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "g.toml")

        def load(text):
            with open(path, "w") as f:
                f.write(text)
            return load_config(path)

        started = load(config_text(directory))
        self.assertEqual(restart_needed(started, load(config_text(directory, trusted="127.0.0.0/8"))), [])
        changed = load(config_text(directory, extra='[[listener]]\nname = "sub"\nendpoint = "tcp:587"\n'
                                                   '[status]\nendpoint = "tcp:9025:interface=127.0.0.1"\n'
                                                   '[spool]\nthreads = 2\n'))
        self.assertEqual(restart_needed(started, changed),
                         ["listener sub was added (tcp:587)", "[spool] changed", "[status] changed"])


class ReloadDaemonTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_sighup_to_the_daemon(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(config_text(directory))
        daemon = spawn_gateway(self, path)
        port = yield daemon.listening_port("mx")
        self.assertEqual((yield relay(port)), 554)
        with open(path, "w") as f:
            f.write(config_text(directory, trusted="127.0.0.0/8"))
        mark = len(daemon.output)
        daemon.signal(signal.SIGHUP)
        yield daemon.wait_for(rb"configuration reloaded", mark)
        self.assertEqual((yield relay(port)), 250)
        with open(path, "w") as f:
            f.write(config_text(directory, trusted="127.0.0.0/8") + "[queue]\n")  # duplicate table
        mark = len(daemon.output)
        daemon.signal(signal.SIGHUP)
        line = yield daemon.wait_for(rb"configuration NOT reloaded[^\n]*", mark)
        self.assertIn(path.encode(), line.group(0))
        self.assertEqual((yield relay(port)), 250)
        yield daemon.stop()
        self.assertNotIn(b"Traceback", daemon.output)
