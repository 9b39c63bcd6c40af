"""
``bash scripts/test.sh`` is green on a fresh Debian: it installs every package the tests use
(swaks *with* its TLS modules, which apt only recommends), and a test whose tool is missing
fails with what to install instead of skipping.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.tools import require_swaks_with_tls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Skips that are about the platform, not a tool scripts/test.sh could install.
PLATFORM_SKIPS = {
    "test_deploy_mdwe.py": "not Linux on x86_64 or aarch64 (no write-execute filter written for it)",
}


def _fake(directory: str, name: str, script: str) -> None:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + script)
    os.chmod(path, stat.S_IRWXU)


class InstallScriptTests(SynchronousTestCase):
    def test_fresh_machine_gets_swaks_with_tls_and_every_listed_package(self):
        fakes = os.path.abspath(self.mktemp())
        os.makedirs(fakes)
        calls = os.path.join(fakes, "apt-calls")
        _fake(fakes, "dpkg-query", "echo not-installed\n")
        _fake(fakes, "apt-get", f'echo "$*" >> {calls}\n')
        _fake(fakes, "id", "echo 0\n")
        env = dict(os.environ, PATH=fakes + os.pathsep + "/usr/bin:/bin")
        out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install-test-deps.sh")],
                             capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        with open(calls) as f:
            installs = [line.split() for line in f if line.startswith("install")]
        self.assertEqual(len(installs), 1)
        for package in ("swaks", "libnet-ssleay-perl", "libio-socket-ssl-perl", "redis-server", "systemd",
                        "python3-venv"):
            self.assertIn(package, installs[0])

    def test_test_script_uses_the_one_package_list(self):
        with open(os.path.join(ROOT, "scripts", "test.sh")) as f:
            script = f.read()
        self.assertIn("scripts/install-test-deps.sh", script)
        self.assertNotIn("apt-get install", script)


class NoSkippedToolsTests(SynchronousTestCase):
    def test_no_test_skips_because_a_tool_is_missing(self):
        pattern = re.compile(r"SkipTest|skipIf|skipUnless|skipTest|^\s*skip\s*=", re.M)
        offenders = []
        tests = os.path.join(ROOT, "tests")
        for name in sorted(os.listdir(tests)):
            if not name.endswith(".py") or name == os.path.basename(__file__) or name in PLATFORM_SKIPS:
                continue
            with open(os.path.join(tests, name), encoding="utf-8") as f:
                if pattern.search(f.read()):
                    offenders.append(name)
        self.assertEqual(offenders, [], "use tests.tools.require_tool: a missing tool must fail, not skip")

    def test_no_test_module_hides_a_failed_import(self):
        """
        A test module that catches ImportError (to skip, or to run fewer tests) turns a broken
        product import into a green run; an import that fails must fail the module.
        """
        pattern = re.compile(r"except\s*\(?[^:\n]*\b(ImportError|ModuleNotFoundError)\b|importorskip")
        offenders = []
        tests = os.path.join(ROOT, "tests")
        for name in sorted(os.listdir(tests)):
            if name.endswith(".py") and name != os.path.basename(__file__):
                with open(os.path.join(tests, name), encoding="utf-8") as f:
                    if pattern.search(f.read()):
                        offenders.append(name)
        self.assertEqual(offenders, [], "import the product normally: a failed import must fail the tests")

    def test_swaks_without_tls_modules_fails_naming_the_packages(self):
        fakes = os.path.abspath(self.mktemp())
        os.makedirs(fakes)
        _fake(fakes, "swaks", 'echo "*** TLS not available: requires Net::SSLeay"\n')
        e = self.assertRaises(self.failureException, require_swaks_with_tls, self, os.path.join(fakes, "swaks"))
        self.assertIn("libnet-ssleay-perl", str(e))
        self.assertIn("requires Net::SSLeay", str(e))
