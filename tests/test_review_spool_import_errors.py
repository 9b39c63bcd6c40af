"""
Review: importing a sendmail drop-off hits a transient OS error (too many open files, EIO,
a permission problem the admin can fix).  The message was acknowledged (sendmail exited 0),
so the entry must stay in incoming/ to be retried at the next scan — not be moved to
quarantine/, where nothing ever delivers it.
"""

from __future__ import annotations

import errno
import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import sendmail
from gateway.spool.disk import SpoolDisk
from gateway.spool.fileops import FileOps
from tests.sendmail_helpers import daemon_spool


class _NoMoreFiles(FileOps):
    def read_file(self, path: str) -> bytes:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class TransientImportErrorTests(SynchronousTestCase):
    def setUp(self):
        self.spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            status = sendmail.main(["--spool", self.spool_dir, "a@example.com"],
                                   stdin=io.BytesIO(b"Subject: s\n\nbody\n"), environ={})
        finally:
            sys.stderr = stderr
        self.assertEqual(status, 0)

    def test_transient_read_error_keeps_the_entry_for_the_next_scan(self):
        scan = SpoolDisk(self.spool_dir, _NoMoreFiles()).scan_incoming()
        self.assertEqual(scan.quarantined, [])
        self.assertEqual(len(scan.errors), 1)
        self.assertEqual(os.listdir(os.path.join(self.spool_dir, "quarantine")), [])
        scan = SpoolDisk(self.spool_dir).scan_incoming()
        [entry] = scan.entries
        self.assertEqual(entry.envelope.recipients, ("a@example.com",))
        self.assertTrue(os.path.exists(entry.message_path))
