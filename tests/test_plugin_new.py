"""
``graphsmtp-plugin new`` (issue 15): the generated package passes its own trial tests (run in a
subprocess from the generated directory, as its author would), and the same plugin loads from
a ``plugin_paths`` directory in a running ``twistd graphsmtp`` daemon without PYTHONPATH.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tomllib

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.cli.plugin_new import main as plugin_main
from gateway.testing.harness import smtp_transaction
from tests.daemon_helpers import spawn_gateway

SECRET = b"From: alice@corp.example\r\nSubject: the secret recipe\r\n\r\nhello\r\n"
HARMLESS = b"From: alice@corp.example\r\nSubject: lunch\r\n\r\nhello\r\n"


def generate(case, name, *extra):
    parent = os.path.abspath(case.mktemp())
    os.makedirs(parent)
    directory = os.path.join(parent, name)
    out = io.StringIO()
    status = plugin_main(["new", name, "--directory", directory, *extra], out)
    case.assertEqual(status, 0, out.getvalue())
    return directory


def run_trial(directory):
    """``python -m twisted.trial tests`` in the plugin's directory, with this interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "twisted.trial", "tests"], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=300)


class GeneratedPackageTests(SynchronousTestCase):
    def test_policy_package_layout(self):
        directory = generate(self, "acme-policy")
        for relative in ("pyproject.toml", "README.md", "acme_policy/__init__.py", "acme_policy/policy.py",
                         "twisted/plugins/acme_policy_plugin.py", "tests/__init__.py", "tests/test_acme_policy.py"):
            self.assertTrue(os.path.isfile(os.path.join(directory, relative)), relative)
        # twisted/ and twisted/plugins/ must stay namespace directories (no __init__.py).
        self.assertFalse(os.path.exists(os.path.join(directory, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(directory, "twisted", "plugins", "__init__.py")))
        with open(os.path.join(directory, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)
        self.assertEqual(project["project"]["name"], "acme-policy")
        self.assertEqual(project["tool"]["setuptools"]["packages"]["find"]["include"],
                         ["acme_policy", "acme_policy.*", "twisted.plugins"])
        with open(os.path.join(directory, "acme_policy", "policy.py"), encoding="utf-8") as f:
            source = f.read()
        self.assertIn("from gateway.plugin import (", source)
        self.assertNotIn("from gateway.policy", source)

    def test_generated_policy_passes_its_own_tests(self):
        directory = generate(self, "acme-policy")
        result = run_trial(directory)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("tests.test_acme_policy", result.stdout)
        self.assertIn("PASSED (successes=4)", result.stdout)

    def test_generated_observer_passes_its_own_tests(self):
        directory = generate(self, "audit-trail", "--observer")
        result = run_trial(directory)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("PASSED (successes=3)", result.stdout)

    def test_bad_name_and_existing_directory_are_refused(self):
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        self.assertEqual(plugin_main(["new", "Acme_Policy", "--directory", os.path.abspath(self.mktemp())], io.StringIO()), 64)
        existing = os.path.abspath(self.mktemp())
        os.makedirs(existing)
        self.assertEqual(plugin_main(["new", "acme-policy", "--directory", existing], io.StringIO()), 73)
        self.assertIn("'Acme_Policy' is not a plugin name", errors.getvalue())
        self.assertIn("already exists", errors.getvalue())


class DaemonLoadsGeneratedPluginTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_plugin_paths_directory_in_a_running_daemon(self):
        directory = generate(self, "acme-policy")
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        config = os.path.join(base, "graphsmtp.toml")
        with open(config, "w") as f:
            f.write(
                f'[gateway]\nstate_dir = "{base}/state"\nhostname = "gateway.test"\nplugin_paths = ["{directory}"]\n\n'
                '[[listener]]\nname = "in"\nendpoint = "tcp:0:interface=127.0.0.1"\ntrusted_networks = ["127.0.0.1/32"]\n'
                'policies = [ { use = "acme-policy", words = ["secret"] } ]\n'
            )
        daemon = spawn_gateway(self, config)
        port = yield daemon.listening_port("in")
        refused = yield deferToThread(smtp_transaction, port, "alice@corp.example", ["bob@corp.example"], SECRET)
        self.assertEqual((refused.refused_at, refused.code, refused.enhanced, refused.text),
                         ("data", 550, "5.7.1", "Refused by acme-policy"))
        accepted = yield deferToThread(smtp_transaction, port, "alice@corp.example", ["bob@corp.example"], HARMLESS)
        self.assertTrue(accepted.accepted, accepted)
        self.assertNotIn(directory, os.environ.get("PYTHONPATH", ""))
