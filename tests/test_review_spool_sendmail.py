"""
Review: graphsmtp-sendmail input edge cases that must not lose any of the submitted bytes.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import sendmail
from gateway.spool.disk import SpoolDisk
from tests.sendmail_helpers import daemon_spool


class NoTrailingNewlineTests(SynchronousTestCase):
    """Input that ends inside the header section without a final newline keeps its last line."""

    def setUp(self):
        self.spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))

    def submit(self, data: bytes) -> bytes:
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            status = sendmail.main(["--spool", self.spool_dir, "a@example.com"], stdin=io.BytesIO(data), environ={})
            err = sys.stderr.getvalue()
        finally:
            sys.stderr = stderr
        self.assertEqual(status, 0, err)
        disk = SpoolDisk(self.spool_dir)
        [queue_id] = disk.queue_ids(disk.layout.incoming)
        entry = disk.load(queue_id, directory=disk.layout.incoming)
        with open(entry.message_path, "rb") as f:
            return f.read()

    def test_body_only_line_without_newline(self):
        stored = self.submit(b"hello world")
        self.assertTrue(stored.endswith(b"\r\n\r\nhello world\r\n"), stored)

    def test_last_header_without_newline(self):
        stored = self.submit(b"Subject: nightly report")
        self.assertIn(b"\r\nSubject: nightly report\r\n", stored)
        self.assertTrue(stored.endswith(b"\r\n\r\n"), stored)

    def test_body_line_after_headers_without_blank_line_or_newline(self):
        stored = self.submit(b"Subject: s\nbody text")
        self.assertIn(b"\r\nSubject: s\r\n\r\nbody text\r\n", stored)
