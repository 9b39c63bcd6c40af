"""
``bench/step_latency.py``: its work directory, where the message step's flush must cost what it
costs on a disk (the other benches refuse tmpfs too).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

import gateway.spool.filesystem
from tests.bench_modules import load_bench

step_latency = load_bench("step_latency")


class WorkDirectoryTests(TestCase):
    def test_refused_on_tmpfs(self) -> None:
        """On tmpfs every fsync is free, so the run stops before any server starts."""
        parent = os.path.abspath(self.mktemp())
        self.patch(gateway.spool.filesystem, "filesystem_type", lambda path: "tmpfs")
        with self.assertRaises(SystemExit) as raised:
            step_latency.work_directory(parent)
        self.assertIn("is on tmpfs", str(raised.exception))
        self.assertEqual(os.listdir(parent), [])

    def test_a_new_directory_on_a_disk(self) -> None:
        """Elsewhere a new directory under the one given, readable by the Postfix it starts."""
        parent = os.path.abspath(self.mktemp())
        self.patch(gateway.spool.filesystem, "filesystem_type", lambda path: "ext4")
        workdir = step_latency.work_directory(parent)
        self.assertEqual(os.path.dirname(workdir), parent)
        self.assertEqual(os.stat(workdir).st_mode & 0o777, 0o755)
