"""
The shipped systemd unit keeps its sandbox: MemoryDenyWriteExecute stays on (the daemon's TLS
works under it, see test_deploy_mdwe) and ``systemd-analyze security`` rates the unit at most
at the exposure documented in docs/deployment.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "etc", "systemd", "graphsmtp.service")
DOC = os.path.join(ROOT, "docs", "deployment.md")


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with open(UNIT, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, value = line.split("=", 1)
                found.setdefault(key, []).append(value)
    return found


class UnitHardeningTests(SynchronousTestCase):
    def test_memory_deny_write_execute_and_the_other_protections_stay_on(self):
        unit = _directives()
        for key in ("MemoryDenyWriteExecute", "NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                    "LockPersonality", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                    "RestrictNamespaces", "RestrictSUIDSGID", "RestrictRealtime"):
            self.assertEqual(unit.get(key), ["yes"], key)
        self.assertEqual(unit["ProtectSystem"], ["strict"])
        self.assertEqual(unit["CapabilityBoundingSet"], ["CAP_NET_BIND_SERVICE"])

    def test_systemd_analyze_exposure_is_the_documented_one(self):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            self.fail("systemd-analyze is missing: install the Debian package systemd (scripts/test.sh does)")
        out = subprocess.run([tool, "security", "--offline=true", UNIT], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, SYSTEMD_COLORS="0"))
        m = re.search(r"Overall exposure level for graphsmtp\.service: ([0-9.]+)", out.stdout + out.stderr)
        self.assertIsNotNone(m, out.stdout + out.stderr)
        with open(DOC, encoding="utf-8") as f:
            documented = re.search(r"overall exposure (?:level )?of ([0-9.]+)", f.read())
        self.assertIsNotNone(documented, "docs/deployment.md must state the unit's exposure")
        self.assertLessEqual(float(m.group(1)), float(documented.group(1)))
