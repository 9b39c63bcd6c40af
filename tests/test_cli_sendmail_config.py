"""
graphsmtp-sendmail finds its configuration the way the daemon does (--config,
$GRAPHSMTP_CONFIG, /etc/graphsmtp/graphsmtp.toml) and never queues into a spool no daemon
reads (issue 9 item 4): with no configuration, or a spool no daemon ever set up, it exits
EX_CONFIG with one line and writes nothing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import sendmail
from gateway.config.locate import SYSTEM_CONFIG, locate_config
from gateway.spool.disk import SpoolDisk
from gateway.tap import ConfigurationFailure, Options
from gateway.testing.spool import make_test_spool
from tests.sendmail_helpers import daemon_spool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DiscoveryTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_order_option_environment_system(self):
        system = self.write("")
        self.assertEqual(locate_config("/a.toml", {"GRAPHSMTP_CONFIG": "/b.toml"}, system), "/a.toml")
        self.assertEqual(locate_config(None, {"GRAPHSMTP_CONFIG": "/b.toml"}, system), "/b.toml")
        self.assertEqual(locate_config(None, {}, system), system)
        self.assertIsNone(locate_config(None, {}, system + ".missing"))
        self.assertEqual(SYSTEM_CONFIG, "/etc/graphsmtp/graphsmtp.toml")

    def test_daemon_reads_graphsmtp_config_from_the_environment(self):
        # The daemon and the tools share locate_config: the variable that points sendmail at a
        # configuration points the daemon at the same one.
        state = os.path.abspath(self.mktemp())
        path = self.write(f'[gateway]\nhostname = "env.example"\nstate_dir = "{state}"\n'
                          '[[listener]]\nname = "l"\nendpoint = "tcp:0:interface=127.0.0.1"\n')
        self.patch(os, "environ", dict(os.environ, GRAPHSMTP_CONFIG=path))
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.config.hostname, "env.example")

    def test_daemon_reports_a_missing_environment_config(self):
        self.patch(os, "environ", dict(os.environ, GRAPHSMTP_CONFIG=self.mktemp()))
        self.patch(sys, "stderr", io.StringIO())  # the one line goes there
        e = self.assertRaises(ConfigurationFailure, Options().parseOptions, [])
        self.assertIn("does not exist", str(e))


class NoStrandedMailTests(SynchronousTestCase):
    def setUp(self):
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        old = os.getcwd()
        os.chdir(self.cwd)
        self.addCleanup(os.chdir, old)

    def run_main(self, args, environ=None, system_config=None):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        return sendmail.main(args, stdin=io.BytesIO(b"Subject: s\n\nbody\n"), environ=environ or {},
                             system_config=system_config or os.path.join(self.cwd, "no-such.toml"))

    def assertOneLine(self, text):
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("graphsmtp-sendmail: "), text)

    def test_no_configuration_is_ex_config_and_writes_nothing(self):
        status = self.run_main(["a@example.com"])
        self.assertEqual(status, sendmail.EX_CONFIG)
        self.assertOneLine(self.stderr.getvalue())
        self.assertIn("no configuration", self.stderr.getvalue())
        self.assertEqual(os.listdir(self.cwd), [])

    def test_spool_no_daemon_set_up_is_ex_config(self):
        spool = os.path.join(self.cwd, "spool")
        config = os.path.join(self.cwd, "gw.toml")
        with open(config, "w") as f:
            f.write(f'[spool]\ndirectory = "{spool}"\n')
        status = self.run_main(["a@example.com"], environ={"GRAPHSMTP_CONFIG": config})
        self.assertEqual(status, sendmail.EX_CONFIG)
        self.assertOneLine(self.stderr.getvalue())
        self.assertIn(spool, self.stderr.getvalue())
        self.assertFalse(os.path.exists(spool))

    def test_named_spool_no_daemon_set_up_is_ex_config(self):
        spool = os.path.join(self.cwd, "spool")
        self.assertEqual(self.run_main(["--spool", spool, "a@example.com"]), sendmail.EX_CONFIG)
        self.assertFalse(os.path.exists(spool))

    def test_system_configuration_is_found(self):
        spool = daemon_spool(self, os.path.join(self.cwd, "spool"))
        system = os.path.join(self.cwd, "system.toml")
        with open(system, "w") as f:
            f.write(f'[spool]\ndirectory = "{spool}"\n')
        self.assertEqual(self.run_main(["a@example.com"], system_config=system), 0, self.stderr.getvalue())
        disk = SpoolDisk(spool)
        self.assertEqual(len(disk.queue_ids(disk.layout.incoming)), 1)

    def test_daemon_spool_accepts_while_the_daemon_is_down(self):
        spool = daemon_spool(self, os.path.join(self.cwd, "spool"))
        self.assertEqual(self.run_main(["--spool", spool, "a@example.com"]), 0, self.stderr.getvalue())
        recovered = make_test_spool(spool)
        self.addCleanup(recovered.close)
        [entry] = self.successResultOf(recovered.recover())
        self.assertEqual(entry.envelope.recipients, ("a@example.com",))


class SubprocessTests(SynchronousTestCase):
    def test_subprocess_without_configuration_strands_nothing(self):
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        config = os.path.join(cwd, "gw.toml")
        with open(config, "w") as f:
            f.write('[gateway]\nhostname = "gw.example"\n')  # default spool: ./graphsmtp-data/spool
        env = dict(os.environ, PYTHONPATH=ROOT, GRAPHSMTP_CONFIG=config)
        result = subprocess.run([sys.executable, "-m", "gateway.cli.sendmail", "root"], input=b"hello\n",
                                capture_output=True, env=env, cwd=cwd, timeout=60)
        self.assertEqual(result.returncode, sendmail.EX_CONFIG, result.stderr)
        self.assertEqual(result.stderr.count(b"\n"), 1, result.stderr)
        self.assertEqual(sorted(os.listdir(cwd)), ["gw.toml"])
