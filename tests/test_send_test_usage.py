"""
graphsmtp-send-test's usage errors are one line and EX_USAGE like every other command's: it
used plain argparse, which printed its three-line usage before the error.
"""

from __future__ import annotations

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import send_test


class UsageErrorTests(SynchronousTestCase):
    def run_main(self, argv):
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        try:
            status = send_test.main(argv, out=io.StringIO())
        except SystemExit as e:
            status = e.code
        return status, err.getvalue()

    def test_missing_arguments(self):
        status, err = self.run_main([])
        self.assertEqual(status, 64)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("FROM, TO", err)

    def test_bad_timeout(self):
        status, err = self.run_main(["a@corp.example", "b@corp.example", "--timeout", "soon"])
        self.assertEqual(status, 64)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("--timeout", err)
