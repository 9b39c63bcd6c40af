"""
Refusals stay counted on /metrics after SIGHUP, and the [local] socket is counted like every
listener.  The reload rebuilt each chain without the counting wrappers, so after the first
``systemctl reload`` graphsmtp_policy_refusals_total stopped moving (a dashboard showed "no
refusals" while every client was refused); the [local] socket was never counted at all.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.config import load_config
from gateway.service import GatewayOptions, makeService
from gateway.testing.harness import send_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = b"From: app@corp.example\r\nTo: bob@corp.example\r\nSubject: m\r\n\r\nbody\r\n"


class ReloadKeepsCountingTests(TestCase):
    timeout = 60

    def config_text(self, trusted: str) -> str:
        return (f'[gateway]\nstate_dir = "{self.directory}/state"\nhostname = "metrics.test"\n'
                f'[[listener]]\nname = "mx"\nendpoint = "tcp:0:interface=127.0.0.1"\ntrusted_networks = ["{trusted}"]\n'
                f'[local]\nsocket = "{self.directory}/s.sock"\n[local.allowed_senders]\n"*" = ["ok@corp.example"]\n')

    @inlineCallbacks
    def start(self):
        self.directory = tempfile.mkdtemp(prefix="gsmtp-", dir="/tmp")  # short: a socket path has ~100 bytes
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "graphsmtp.toml")
        self.write("10.0.0.0/8")
        self.service = makeService(GatewayOptions(load_config(self.path), reload_config=lambda: load_config(self.path),
                                                  install_signal_handlers=False), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        parts = {part.config.name: part for part in self.service.components.listeners}
        self.port = (yield parts["mx"].service.when_listening()).getHost().port
        yield parts["sendmail"].service.when_listening()
        yield self.service.components.runner.ready

    def write(self, trusted: str) -> None:
        with open(self.path, "w") as f:
            f.write(self.config_text(trusted))

    def refusals(self, listener: str) -> float:
        registry = self.service.components.metrics.registry
        return registry.get_sample_value("graphsmtp_policy_refusals_total",
                                         {"listener": listener, "policy": "relay-access", "class": "5xx"}) or 0.0

    @inlineCallbacks
    def relay_refused(self):
        failure = yield send_message(self.port, "app@corp.example", ["bob@corp.example"], MESSAGE).addErrback(
            lambda f: f.value)
        self.assertIsInstance(failure, (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused))

    @inlineCallbacks
    def test_relay_refusals_are_counted_after_a_reload(self):
        yield self.start()
        yield self.relay_refused()
        self.assertEqual(self.refusals("mx"), 1.0)
        self.write("192.0.2.0/24")  # still not us: refused again, by the rebuilt chain
        self.service.reload()
        yield self.relay_refused()
        self.assertEqual(self.refusals("mx"), 2.0)

    @inlineCallbacks
    def test_local_socket_refusals_and_acceptances_are_counted(self):
        yield self.start()
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("GRAPHSMTP_CONFIG", None)

        def sendmail(sender: str):
            return getProcessOutputAndValue(
                sys.executable, ["-m", "gateway.cli.sendmail", "--config", self.path, "-f", sender, "ops@corp.example"],
                env=env, path=ROOT, reactor=reactor, stdinBytes=b"Subject: s\n\nbody\n")

        out, err, code = yield sendmail("boss@corp.example")
        self.assertEqual(code, 77, err)
        self.assertEqual(self.refusals("sendmail"), 1.0)
        out, err, code = yield sendmail("ok@corp.example")
        self.assertEqual(code, 0, err)
        registry = self.service.components.metrics.registry
        self.assertEqual(registry.get_sample_value("graphsmtp_smtp_messages_accepted_total", {"listener": "sendmail"}), 1.0)
        self.service.reload()
        out, err, code = yield sendmail("boss@corp.example")
        self.assertEqual(code, 77, err)
        self.assertEqual(self.refusals("sendmail"), 2.0)
