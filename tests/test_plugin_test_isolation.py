"""
Test isolation (issue 15): after ``scripts/test.sh``'s install, graphsmtp's own ``tests``
package must not be importable from outside the checkout, so ``trial tests`` in a plugin's own
folder never runs graphsmtp's suite (it did: the editable install put the checkout on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = "run `.venv/bin/python scripts/editable-import-root.py` (scripts/test.sh does) after the editable install"


class PluginFolderTests(SynchronousTestCase):
    def plugin_folder(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "tests"))
        with open(os.path.join(folder, "tests", "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(folder, "tests", "test_only_mine.py"), "w") as f:
            f.write("from twisted.trial.unittest import SynchronousTestCase\n\n\n"
                    "class OnlyMine(SynchronousTestCase):\n    def test_mine(self):\n        pass\n")
        return folder

    def environment(self):
        return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run_here(self, folder, *argv):
        return subprocess.run(list(argv), cwd=folder, env=self.environment(), capture_output=True, text=True, timeout=300)

    def test_graphsmtp_tests_are_not_importable_outside_the_checkout(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        code = ("import importlib.util, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
                "spec = importlib.util.find_spec('tests'); print(spec.origin if spec else None); "
                "import gateway, twisted.plugins.graphsmtp_policies; print('ok')")
        result = self.run_here(folder, sys.executable, "-c", code)
        self.assertEqual(result.returncode, 0, result.stderr)
        where, ok = result.stdout.split()
        self.assertEqual(where, "None", f"graphsmtp's tests package is importable from anywhere ({where}): {FIX}")
        self.assertEqual(ok, "ok")

    def test_trial_in_a_plugin_folder_runs_the_plugins_tests(self):
        self.test_graphsmtp_tests_are_not_importable_outside_the_checkout()  # else this would run ours (minutes)
        folder = self.plugin_folder()
        result = self.run_here(folder, sys.executable, "-m", "twisted.trial", "tests")
        self.assertIn("tests.test_only_mine", result.stdout)
        self.assertIn("PASSED (successes=1)", result.stdout, result.stdout + result.stderr)

    def test_trial_script_in_a_plugin_folder_never_runs_graphsmtps_tests(self):
        self.test_graphsmtp_tests_are_not_importable_outside_the_checkout()
        folder = self.plugin_folder()
        trial = os.path.join(os.path.dirname(sys.executable), "trial")
        self.assertTrue(os.path.exists(trial), f"{trial} is missing: scripts/test.sh installs Twisted into the venv")
        result = self.run_here(folder, trial, "tests")
        self.assertNotIn("test_policy_docs", result.stdout)
        self.assertNotIn(os.path.join(ROOT, "tests"), result.stdout)
        # The trial script does not put the current directory on sys.path; with it, the plugin's run.
        env = dict(self.environment(), PYTHONPATH=folder)
        result = subprocess.run([trial, "tests"], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        self.assertIn("PASSED (successes=1)", result.stdout, result.stdout + result.stderr)
