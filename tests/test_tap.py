"""
The twistd plugin: discovered by twistd, and a bad configuration is one clear line before
anything is bound.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from gateway.tap import ConfigurationFailure, Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(SynchronousTestCase):
    def test_twistd_finds_the_graphsmtp_tap(self):
        taps = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("graphsmtp", taps)
        self.assertIs(taps["graphsmtp"].options, Options)

    def test_twistd_help_lists_graphsmtp(self):
        env = dict(os.environ, PYTHONPATH=ROOT)
        out = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
        )
        self.assertIn("graphsmtp", out.stdout)


class OptionsTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bad_value_is_one_line_naming_the_key(self):
        path = self.write('[[listener]]\nname = "sub"\nendpoint = "tcp:587"\nauth = "sometimes"\n')
        self.patch(sys, "stderr", io.StringIO())  # the one line goes there
        e = self.assertRaises(ConfigurationFailure, Options().parseOptions, ["--config", path])
        self.assertIn("listener.sub.auth", str(e))
        self.assertNotIn("\n", str(e))

    def test_bad_deliverer_option(self):
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--deliverer", "carrier-pigeon"])
        self.assertIn("--deliverer", str(e))

    def test_options_override_and_build_the_service(self):
        state = os.path.abspath(self.mktemp())
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--state-dir", state, "--hostname", "mx.test"])
        self.assertEqual(options.config.hostname, "mx.test")
        self.assertEqual(options.config.listeners[0].endpoint, "tcp:0:interface=127.0.0.1")
        self.assertEqual(options.config.spool.directory, os.path.join(state, "spool"))
        self.assertIsNotNone(options.service)

    def test_twistd_exits_with_the_error_and_binds_nothing(self):
        path = self.write('[spool]\nthreads = "many"\n')
        env = dict(os.environ, PYTHONPATH=ROOT)
        out = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "graphsmtp", "--config", path, "--listen", "tcp:0:interface=127.0.0.1"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
        )
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("spool.threads: must be an integer", out.stdout + out.stderr)
        self.assertNotIn("Traceback", out.stdout + out.stderr)
