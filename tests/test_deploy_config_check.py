"""
``graphsmtp-config check`` on a ``systemd:`` listener, run outside systemd exactly as the setup
doc says: the endpoint is validated without binding (or finding) the socket; the daemon started
outside its socket unit says in one line which socket is missing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli.configcheck import main
from gateway.tap import ConfigurationFailure, Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SystemdListenerCheckTests(SynchronousTestCase):
    def write(self, endpoint: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = "{os.path.abspath(self.mktemp())}"\n'
                    f'[[listener]]\nname = "mx"\nendpoint = "{endpoint}"\ntrusted_networks = ["10.0.0.0/8"]\n')
        return path

    def run_main(self, *argv):
        out = io.StringIO()
        return main(list(argv), out), out.getvalue()

    def test_systemd_listener_is_checked_without_systemd(self):
        code, out = self.run_main("check", self.write("systemd:domain=INET6:name=smtp"))
        self.assertEqual(code, 0, out)
        self.assertIn("listener mx", out)
        self.assertIn("socket passed by systemd", out)

    def test_the_command_as_an_admin_runs_it(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        out = subprocess.run([sys.executable, "-m", "gateway.cli.configcheck", "check",
                              self.write("haproxy:systemd:domain=INET:index=0")],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertNotIn("Traceback", out.stderr)

    def test_bad_systemd_endpoint_names_the_key(self):
        for endpoint, problem in (("systemd:domain=INET6", "exactly one of name= and index="),
                                  ("systemd:domain=IPX:name=smtp", "domain must be one of"),
                                  ("systemd:domain=INET:name=smtp:backlog=5", "unexpected arguments"),
                                  ("systemd:domain=INET:index=x", "index must be a number")):
            code, out = self.run_main("check", self.write(endpoint))
            self.assertEqual(code, 78, endpoint)  # EX_CONFIG
            self.assertIn("listener.mx.endpoint", out)
            self.assertIn(problem, out)
            self.assertEqual(len(out.strip().splitlines()), 1, out)

    def test_daemon_outside_its_socket_unit_is_one_line(self):
        options = Options()
        self.patch(sys, "stderr", io.StringIO())  # the one line goes there
        e = self.assertRaises(ConfigurationFailure, options.parseOptions, ["--config", self.write("systemd:domain=INET6:name=smtp")])
        self.assertIn("listener.mx.endpoint", str(e))
        self.assertIn("systemd passed no socket named 'smtp'", str(e))
