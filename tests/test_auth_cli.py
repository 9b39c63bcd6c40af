"""graphsmtp-users and graphsmtp-certs: what they write, and how they refuse bad input."""

from __future__ import annotations

import io
import os

import bcrypt
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import certs as certs_cli
from gateway.cli import users as users_cli
from gateway.config.model import ListenerConfig
from gateway.config.users import load_users
from gateway.smtp.tls import TLSContextSource

PASSWORD = "a long enough password"


class UsersCLITests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "users.jsonl")

    def run_cli(self, *argv, stdin="", prompts=()):
        answers = list(prompts)
        out, err = io.StringIO(), io.StringIO()
        code = users_cli.main(
            ["--file", self.path, *argv], stdin=io.StringIO(stdin), stdout=out, stderr=err,
            prompt=lambda text: answers.pop(0),
        )
        self.assertNotIn(PASSWORD, out.getvalue() + err.getvalue())
        return code, out.getvalue(), err.getvalue()

    def test_add_with_prompt_writes_private_bcrypt_file(self):
        code, out, _ = self.run_cli("add", "scanner", "--sender", "scanner@corp.example", "--rounds", "4", prompts=[PASSWORD, PASSWORD])
        self.assertEqual(code, 0)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        user = load_users(self.path)["scanner"]
        self.assertTrue(bcrypt.checkpw(PASSWORD.encode(), user.password_hash.encode()))
        self.assertEqual(user.allowed_senders, ("scanner@corp.example",))
        self.assertNotIn(PASSWORD, open(self.path).read())

    def test_add_from_stdin(self):
        code, _, _ = self.run_cli("add", "app", "-s", "*@app.example", "--password-stdin", "--rounds", "4", stdin=PASSWORD + "\n")
        self.assertEqual(code, 0)
        self.assertTrue(bcrypt.checkpw(PASSWORD.encode(), load_users(self.path)["app"].password_hash.encode()))

    def test_add_refusals(self):
        cases = [
            (("add", "x", "--rounds", "4"), [PASSWORD, PASSWORD], "--sender", 64),
            (("add", "x", "-s", "*", "--rounds", "4"), [PASSWORD, PASSWORD + "!"], "do not match", 65),
            (("add", "x", "-s", "*", "--rounds", "4"), ["short", "short"], "too short", 65),
            (("add", "x", "-s", "*", "--rounds", "4"), ["x" * 73] * 2, "too long", 65),
            (("add", "x", "-s", "corp.example", "--rounds", "4"), [PASSWORD] * 2, "sender pattern", 64),
            (("add", "bad login", "-s", "*", "--rounds", "4"), [PASSWORD] * 2, "spaces", 65),
        ]
        for argv, prompts, fragment, status in cases:  # sysexits: 64 usage, 65 data
            code, _, err = self.run_cli(*argv, prompts=prompts)
            self.assertEqual(code, status, argv)
            self.assertIn(fragment, err)
        self.assertFalse(os.path.exists(self.path))

    def test_lifecycle(self):
        self.run_cli("add", "a", "-s", "a@x.example", "--rounds", "4", prompts=[PASSWORD] * 2)
        self.assertEqual(self.run_cli("add", "a", "-s", "*", prompts=[PASSWORD] * 2)[0], 65)
        self.assertEqual(self.run_cli("set-senders", "a", "a@x.example", "*@y.example")[0], 0)
        self.assertEqual(load_users(self.path)["a"].allowed_senders, ("a@x.example", "*@y.example"))
        old_hash = load_users(self.path)["a"].password_hash
        self.assertEqual(self.run_cli("passwd", "a", "--rounds", "4", prompts=["another password!"] * 2)[0], 0)
        self.assertNotEqual(load_users(self.path)["a"].password_hash, old_hash)
        self.run_cli("disable", "a")
        code, out, _ = self.run_cli("list")
        self.assertEqual(out, "a\ta@x.example, *@y.example  (disabled)\n")
        self.assertNotIn("$2b$", out)
        self.run_cli("enable", "a")
        self.assertFalse(load_users(self.path)["a"].disabled)
        self.assertEqual(self.run_cli("remove", "a")[0], 0)
        self.assertEqual(load_users(self.path), {})
        code, _, err = self.run_cli("remove", "a")
        self.assertEqual(code, 67)  # EX_NOUSER
        self.assertIn("no login 'a'", err)

    def test_refuses_to_touch_a_broken_file(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b'{"login": "a", "hash": "plain", "allowed_senders": ["*"]}\n')
        os.close(fd)
        code, _, err = self.run_cli("set-senders", "a", "*")
        self.assertEqual(code, 65)  # EX_DATAERR
        self.assertIn("line 1", err)

    def test_path_from_config(self):
        config = os.path.join(self.dir, "g.toml")
        with open(config, "w") as f:
            f.write('[auth]\nusers_file = "users.jsonl"\n')
        code = users_cli.main(
            ["--config", config, "add", "a", "-s", "*", "--rounds", "4"], stdout=io.StringIO(), stderr=io.StringIO(),
            prompt=lambda text: PASSWORD,
        )
        self.assertEqual(code, 0)
        self.assertTrue(os.path.exists(self.path))
        out = io.StringIO()
        self.assertEqual(users_cli.main(["--config", config, "list"], stdout=out, stderr=io.StringIO()), 0)
        self.assertIn("a\t*", out.getvalue())


class CertsCLITests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")

    def run_cli(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        return certs_cli.main(["--cert", self.cert, "--key", self.key, *argv], stdout=out, stderr=err), out.getvalue(), err.getvalue()

    def test_generates_usable_pair_with_private_key(self):
        code, out, err = self.run_cli("--name", "relay.test", "--name", "127.0.0.1")
        self.assertEqual(code, 0)
        self.assertIn("NOT FOR PRODUCTION", err)
        self.assertEqual(os.stat(self.key).st_mode & 0o777, 0o600)
        # the gateway's own TLS loader accepts the pair
        TLSContextSource(ListenerConfig(name="l", endpoint="tcp:0", tls="starttls", tls_cert=self.cert, tls_key=self.key))

    def test_does_not_overwrite_without_force(self):
        self.run_cli("--name", "a.test")
        before = open(self.key, "rb").read()
        code, _, err = self.run_cli("--name", "a.test")
        self.assertEqual(code, certs_cli.EX_CANTCREAT)
        self.assertIn("--force", err)
        self.assertEqual(open(self.key, "rb").read(), before)
        self.assertEqual(self.run_cli("--name", "a.test", "--force")[0], 0)
        self.assertNotEqual(open(self.key, "rb").read(), before)
