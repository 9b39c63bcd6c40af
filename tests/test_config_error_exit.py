"""
A configuration that does not load stops twistd and twist with one line and exit status 78
(EX_CONFIG).  It was a ``usage.UsageError``, for which both print their whole option list
(twenty lines) before the error, and exit 1: under systemd's Restart=always that was twenty
lines of usage text in the journal every two seconds.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.daemon_helpers import ROOT, GatewayDaemon, spawn_gateway

BROKEN = '[[listener]]\nname = "sub"\nendpoint = "tcp:0:interface=127.0.0.1"\nauth = "sometimes"\n'


class ConfigurationErrorExitTests(TestCase):
    timeout = 60

    def broken_config(self) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(BROKEN)
        return path

    def assert_one_line(self, daemon: GatewayDaemon, code: int) -> None:
        self.assertEqual(code, 78, daemon.output)
        lines = daemon.errors.decode("utf-8", "replace").splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("configuration error", lines[0])
        self.assertIn("listener.sub.auth", lines[0])
        self.assertNotIn(b"Usage:", daemon.output)
        self.assertNotIn(b"Traceback", daemon.output)

    @inlineCallbacks
    def test_twistd(self):
        daemon = spawn_gateway(self, self.broken_config())
        code = yield daemon.ended
        self.assert_one_line(daemon, code)

    @inlineCallbacks
    def test_twist(self):
        daemon = GatewayDaemon()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        reactor.spawnProcess(daemon, sys.executable,
                             [sys.executable, "-c", "from twisted.application.twist._twist import Twist; Twist.main()",
                              "graphsmtp", "--config", self.broken_config()], env=env, path=ROOT)
        self.addCleanup(daemon.stop)
        code = yield daemon.ended
        self.assert_one_line(daemon, code)

    def test_the_unit_does_not_restart_a_broken_configuration(self):
        with open(os.path.join(ROOT, "etc", "systemd", "graphsmtp.service")) as f:
            unit = f.read()
        self.assertIn("\nRestartPreventExitStatus=78\n", unit)
