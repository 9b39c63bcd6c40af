"""
gateway.testing.processes: a daemon's children and its spool commit process, found from /proc
(the SIGKILL test stops the commit process by that pid; bench/reactor_steps.py reads its CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.testing.processes import COMMIT_PROCESS_MODULE, children, commit_child


class ProcessesTests(SynchronousTestCase):
    def spawn(self, *argv: str) -> subprocess.Popen:
        """A child with ``argv`` on its command line, running (until the test ends) when this returns."""
        child = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); import sys; sys.stdin.read()", *argv],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(child.wait)
        self.addCleanup(child.stdout.close)
        self.addCleanup(child.stdin.close)
        # Popen returns once the exec has begun, and /proc shows an empty command line until
        # the kernel has set up the new program's arguments: wait for the child to say it runs.
        self.assertEqual(child.stdout.readline(), b"up\n")
        return child

    def test_the_commit_process_is_told_from_other_children(self):
        other = self.spawn("something-else")
        committer = self.spawn(COMMIT_PROCESS_MODULE.decode())
        self.assertTrue({other.pid, committer.pid} <= set(children(os.getpid())))
        self.assertEqual(commit_child(os.getpid()), committer.pid)

    def test_none_without_one_and_for_a_process_that_is_gone(self):
        other = self.spawn("something-else")
        self.assertIsNone(commit_child(other.pid))  # it has no children at all
        self.assertEqual(children(2 ** 22 + 1), [])  # above the largest pid Linux allows: no such process
        self.assertIsNone(commit_child(2 ** 22 + 1))
