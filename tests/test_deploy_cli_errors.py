"""
``graphsmtp-users`` and ``graphsmtp-config`` as an admin's shell runs them: every error is one
line on stderr and a sysexits(3) status, never a traceback — in particular a password piped in
without ``--password-stdin``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "correct horse battery staple"


def run(module: str, *argv: str, stdin: bytes = b"", cwd: str = ROOT) -> subprocess.CompletedProcess:
    # A new session has no controlling terminal, like cron or a CI job: getpass cannot open
    # /dev/tty and falls back to stdin, which is where the traceback came from.
    return subprocess.run([sys.executable, "-m", module, *argv], input=stdin, capture_output=True,
                          cwd=cwd, timeout=60, start_new_session=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))


class UsersCommandTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.users = os.path.join(self.dir, "users.jsonl")

    def assertOneLineError(self, out: subprocess.CompletedProcess, status: int, fragment: str) -> None:
        err = out.stderr.decode()
        self.assertNotIn("Traceback", err)
        self.assertEqual(out.returncode, status, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(fragment, err)
        self.assertNotIn(PASSWORD, err + out.stdout.decode())

    def test_piped_password_without_password_stdin(self):
        out = run("gateway.cli.users", "--file", self.users, "add", "scanner", "--sender", "*",
                  stdin=(PASSWORD + "\n").encode())
        self.assertOneLineError(out, 64, "--password-stdin")
        self.assertFalse(os.path.exists(self.users))

    def test_passwd_with_nothing_on_stdin(self):
        out = run("gateway.cli.users", "--file", self.users, "passwd", "scanner")
        self.assertOneLineError(out, 66, "does not exist")

    def test_password_stdin_still_works(self):
        out = run("gateway.cli.users", "--file", self.users, "add", "scanner", "--sender", "*",
                  "--password-stdin", "--rounds", "4", stdin=(PASSWORD + "\n").encode())
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_password_that_is_not_text(self):
        out = run("gateway.cli.users", "--file", self.users, "add", "scanner", "--sender", "*",
                  "--password-stdin", stdin=b"\xff\xfe" + PASSWORD.encode() + b"\n")
        self.assertNotIn("Traceback", out.stderr.decode())
        self.assertNotEqual(out.returncode, 0)

    def test_usage_error_is_one_line_and_ex_usage(self):
        out = run("gateway.cli.users", "--file", self.users, "add")
        self.assertOneLineError(out, 64, "login")

    def test_missing_config_is_ex_config(self):
        out = run("gateway.cli.users", "--config", os.path.join(self.dir, "nope.toml"), "list")
        self.assertOneLineError(out, 78, "does not exist")

    def test_unwritable_users_file_is_ex_cantcreat(self):
        out = run("gateway.cli.users", "--file", os.path.join(self.dir, "no", "such", "dir", "u.jsonl"),
                  "add", "a", "--sender", "*", "--password-stdin", "--rounds", "4", stdin=(PASSWORD + "\n").encode())
        self.assertOneLineError(out, 73, "cannot write")


class ConfigCommandTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bad_configuration_is_one_line_and_ex_config(self):
        out = run("gateway.cli.configcheck", "check", self.write("[gateway]\nhostnme = \"x\"\n"))
        self.assertEqual(out.returncode, 78, out.stdout + out.stderr)
        self.assertNotIn(b"Traceback", out.stderr)
        self.assertIn(b"gateway.hostnme", out.stdout + out.stderr)

    def test_ca_bundle_without_certificates_is_a_configuration_error(self):
        not_pem = self.write("just text\n")
        path = self.write(f'[graph]\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s"\nca_bundle = "{not_pem}"\n')
        out = run("gateway.cli.configcheck", "check", path)
        self.assertNotIn(b"Traceback", out.stderr)
        self.assertEqual(out.returncode, 78, out.stdout + out.stderr)
        self.assertIn(b"graph.ca_bundle", out.stdout + out.stderr)

    def test_usage_error_is_ex_usage(self):
        out = run("gateway.cli.configcheck", "frobnicate")
        self.assertEqual(out.returncode, 64)
        self.assertEqual(len(out.stderr.decode().strip().splitlines()), 1, out.stderr)
