"""
SIGHUP rebuilds the [local] socket's settings too — per-user allowed senders, limits and its
policy chain — as it does for every [[listener]]; before, prepare_reload only looked at the
[[listener]] tables, so an edited [local] section was silently ignored (not even reported as
needing a restart).  A moved socket is reported as needing a restart.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
import textwrap

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.config import load_config
from gateway.service import GatewayOptions, makeService
from gateway.testing.logs import LogCapture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = pwd.getpwuid(os.getuid()).pw_name


class LocalReloadTests(TestCase):
    timeout = 60

    def config_text(self, allowed: str, socket: str = "submit.sock", extra: str = "") -> str:
        return textwrap.dedent(f"""\
            [gateway]
            state_dir = "{self.directory}/state"
            hostname = "reload.test"
            [[listener]]
            name = "mx"
            endpoint = "tcp:0:interface=127.0.0.1"
            [local]
            socket = "{self.directory}/{socket}"
            [local.allowed_senders]
            "{USER}" = ["{allowed}"]
            """) + extra

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    @inlineCallbacks
    def start(self, text: str):
        self.directory = tempfile.mkdtemp(prefix="gsmtp-", dir="/tmp")  # short: a socket path has ~100 bytes
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "graphsmtp.toml")
        self.write(text.replace("@DIR@", self.directory) if "@DIR@" in text else self.config_text("a@corp.example"))
        self.log_capture = LogCapture.install(self)
        self.service = makeService(GatewayOptions(load_config(self.path), reload_config=lambda: load_config(self.path),
                                                  install_signal_handlers=False), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        [self.part] = [p for p in self.service.components.listeners if p.config.name == "sendmail"]
        yield self.part.service.when_listening()
        yield self.service.components.runner.ready

    def sendmail(self, sender: str):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("GRAPHSMTP_CONFIG", None)
        return getProcessOutputAndValue(
            sys.executable, ["-m", "gateway.cli.sendmail", "--config", self.path, "-f", sender, "ops@corp.example"],
            env=env, path=ROOT, reactor=reactor, stdinBytes=b"Subject: reload\n\nbody\n")

    @inlineCallbacks
    def test_allowed_senders_and_limits_of_the_local_socket_are_rebuilt(self):
        yield self.start("")
        out, err, code = yield self.sendmail("b@corp.example")
        self.assertEqual(code, 77, err)  # EX_NOPERM: not an allowed sender yet
        self.write(self.config_text("b@corp.example", extra="[local.limits]\nmax_recipients = 7\n"))
        self.service.reload()
        self.assertEqual([line for line in self.log_capture.messages() if "NOT reloaded" in line], [])
        self.assertEqual(self.part.factory.listener.limits.max_recipients, 7)
        self.assertEqual(self.part.factory.listener.endpoint, self.service.config.local.listener().endpoint)
        out, err, code = yield self.sendmail("b@corp.example")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.sendmail("a@corp.example")
        self.assertEqual(code, 77, err)
        judge = self.service.components.spool.import_judge  # drop-offs are judged by the new [local] settings too
        self.assertEqual(judge.local.senders_for(USER), ("b@corp.example",))

    @inlineCallbacks
    def test_bad_allowed_sender_pattern_keeps_the_running_configuration(self):
        yield self.start("")
        self.write(self.config_text("not a pattern <>"))
        self.service.reload()
        [line] = [line for line in self.log_capture.messages() if "NOT reloaded" in line]
        self.assertIn("local.allowed_senders", line)
        self.assertEqual(self.part.factory.senders_for(USER), ("a@corp.example",))

    @inlineCallbacks
    def test_moved_socket_needs_a_restart(self):
        yield self.start("")
        self.write(self.config_text("a@corp.example", socket="other.sock"))
        self.service.reload()
        self.assertEqual([line for line in self.log_capture.messages() if "restart graphsmtp" in line],
                         ["SIGHUP: [local] socket or mode changed: restart graphsmtp to apply it"])
