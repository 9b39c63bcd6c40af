"""
graphsmtp-sendmail: end to end in a subprocess into a temporary spool, then the daemon side's
recovery picks the message up; flags, line-ending conversion and exit codes in-process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import sendmail
from gateway.spool.disk import SpoolDisk
from gateway.spool.interfaces import SpoolError
from gateway.testing.spool import make_test_spool
from tests.sendmail_helpers import daemon_spool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_subprocess(args, stdin: bytes, env=None):
    environment = dict(os.environ, PYTHONPATH=ROOT)
    environment.pop("GRAPHSMTP_CONFIG", None)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "gateway.cli.sendmail", *args], input=stdin,
                          capture_output=True, env=environment, cwd=ROOT, timeout=60)


class EndToEndTests(SynchronousTestCase):
    def setUp(self):
        self.spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))

    def recovered(self):
        spool = make_test_spool(self.spool_dir)
        self.addCleanup(spool.close)
        return self.successResultOf(spool.recover())

    def test_subprocess_message_recovered_by_spool(self):
        message = (b"From: App <app@example.com>\nTo: Alice <alice@example.com>\n"
                   b"Cc: bob@example.com\nBcc: hidden@example.com\nSubject: nightly\n\n"
                   b"line one\n.\nstill body with -i\n")
        result = run_subprocess(["-t", "-oi", "-f", "cron@example.com", "--spool", self.spool_dir,
                                 "--", "extra@example.com"], message)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, b"")
        [entry] = self.recovered()
        self.assertEqual(entry.envelope.sender, "cron@example.com")
        self.assertEqual(entry.envelope.recipients,
                         ("extra@example.com", "alice@example.com", "bob@example.com", "hidden@example.com"))
        self.assertEqual(entry.provenance.listener, "sendmail")
        self.assertEqual(entry.provenance.client_address, "127.0.0.1")
        with open(entry.message_path, "rb") as f:
            stored = f.read()
        self.assertNotIn(b"hidden@example.com", stored)
        self.assertNotIn(b"Bcc", stored)
        self.assertNotIn(b"\n", stored.replace(b"\r\n", b""))
        self.assertTrue(stored.startswith(b"Received: by "))
        self.assertIn(f"id {entry.queue_id}".encode(), stored)
        self.assertIn(b"\r\nMessage-ID: <", stored)
        self.assertIn(b"\r\nDate: ", stored)
        self.assertTrue(stored.endswith(b"\r\n\r\nline one\r\n.\r\nstill body with -i\r\n"))
        self.assertEqual(entry.size, len(stored))
        self.assertEqual(os.listdir(os.path.join(self.spool_dir, "incoming")), [])

    def test_subprocess_lone_dot_ends_message_without_i(self):
        result = run_subprocess(["--spool", self.spool_dir, "rcpt@example.com"],
                                b"Subject: x\n\nbody\n.\nnot part of it\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = self.recovered()
        with open(entry.message_path, "rb") as f:
            self.assertTrue(f.read().endswith(b"\r\n\r\nbody\r\n"))

    def test_subprocess_spool_from_environment_config(self):
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f'[spool]\ndirectory = "{self.spool_dir}"\n[gateway]\nhostname = "gw.example"\n')
        result = run_subprocess(["root"], b"hello\n", env={"GRAPHSMTP_CONFIG": config})
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = self.recovered()
        self.assertEqual(entry.envelope.recipients, ("root@gw.example",))
        with open(entry.message_path, "rb") as f:
            stored = f.read()
        # A header-less message gets the separator; the body is kept.
        self.assertTrue(stored.endswith(b"\r\n\r\nhello\r\n"))

    def test_subprocess_usage_error(self):
        result = run_subprocess(["--spool", self.spool_dir], b"Subject: x\n\nno recipients\n")
        self.assertEqual(result.returncode, sendmail.EX_USAGE)
        self.assertIn(b"no recipients", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.spool_dir, "incoming")) and
                         os.listdir(os.path.join(self.spool_dir, "incoming")))


class InProcessTests(SynchronousTestCase):
    def setUp(self):
        self.spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))

    def run_main(self, args, data: bytes, environ=None):
        self.stderr = io.StringIO()
        real = sys.stderr
        sys.stderr = self.stderr
        try:
            return sendmail.main(args, stdin=io.BytesIO(data), environ=environ or {})
        finally:
            sys.stderr = real

    def stored(self):
        disk = SpoolDisk(self.spool_dir)
        [queue_id] = disk.queue_ids(disk.layout.incoming)
        entry = disk.load(queue_id, directory=disk.layout.incoming)
        with open(entry.message_path, "rb") as f:
            return entry, f.read()

    def test_line_endings_normalised(self):
        status = self.run_main(["--spool", self.spool_dir, "a@example.com"],
                               b"Subject: x\r\n\r\nunix\nwindows\r\nold mac\rend")
        self.assertEqual(status, 0, self.stderr.getvalue())
        _, data = self.stored()
        self.assertTrue(data.endswith(b"\r\n\r\nunix\r\nwindows\r\nold mac\r\nend\r\n"))

    def test_full_name_and_null_sender(self):
        status = self.run_main(["-F", "Backup Job", "-f", "<>", "--spool", self.spool_dir, "a@example.com"],
                               b"Subject: s\n\nb\n")
        self.assertEqual(status, 0, self.stderr.getvalue())
        entry, data = self.stored()
        self.assertEqual(entry.envelope.sender, "")
        self.assertIn(b"\r\nFrom: Backup Job <", data)

    def test_existing_from_message_id_date_kept(self):
        message = (b"From: a@example.com\nMessage-ID: <own@id>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
                   b"Subject: s\n\nb\n")
        self.run_main(["--spool", self.spool_dir, "a@example.com"], message)
        _, data = self.stored()
        self.assertEqual(data.count(b"Message-ID:"), 1)
        self.assertEqual(data.count(b"\r\nDate:"), 1)
        self.assertEqual(data.count(b"\r\nFrom:"), 1)
        self.assertIn(b"Message-ID: <own@id>\r\n", data)

    def test_ignored_flags_accepted(self):
        status = self.run_main(["-odi", "-oem", "-bm", "-i", "-v", "-N", "never", "-C", self.spool_dir,
                                "a@example.com"], b"Subject: s\n\nb\n.\nmore\n")
        self.assertEqual(status, 0, self.stderr.getvalue())
        _, data = self.stored()
        self.assertTrue(data.endswith(b"b\r\n.\r\nmore\r\n"))

    def test_bad_address(self):
        status = self.run_main(["--spool", self.spool_dir, "bad address@example.com"], b"x\n")
        self.assertEqual(status, sendmail.EX_DATAERR)
        self.assertIn("invalid address", self.stderr.getvalue())

    def test_bad_address_in_header(self):
        status = self.run_main(["-t", "--spool", self.spool_dir], b"To: a@b@c\n\nx\n")
        self.assertEqual(status, sendmail.EX_DATAERR)
        self.assertIn("message refused: To:", self.stderr.getvalue())

    def test_unsupported_mode(self):
        self.assertEqual(self.run_main(["-bs"], b""), sendmail.EX_USAGE)
        self.assertIn("-bs is not supported", self.stderr.getvalue())
        self.assertEqual(self.run_main(["-x"], b""), sendmail.EX_USAGE)

    def test_config_error(self):
        status = self.run_main(["--config", self.mktemp(), "a@example.com"], b"x\n")
        self.assertEqual(status, sendmail.EX_CONFIG)
        self.assertIn("does not exist", self.stderr.getvalue())

    def test_spool_path_unusable(self):
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        status = self.run_main(["--spool", os.path.join(blocker, "spool"), "a@example.com"], b"x\n")
        self.assertEqual(status, sendmail.EX_CONFIG)
        self.assertIn("spool", self.stderr.getvalue())

    def test_too_large(self):
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[spool]\ndirectory = "{self.spool_dir}"\n[limits]\nmax_message_size = 2048\n')
        status = self.run_main(["--config", config, "a@example.com"], b"Subject: s\n\n" + (b"x" * 80 + b"\n") * 100)
        self.assertEqual(status, sendmail.EX_DATAERR)
        self.assertIn("larger than", self.stderr.getvalue())
        self.assertEqual(os.listdir(os.path.join(self.spool_dir, "incoming")), [])

    def test_failure_mapping(self):
        full = sendmail._spool_failure(SpoolError("x", out_of_space=True), "/s")
        self.assertEqual(full.status, sendmail.EX_TEMPFAIL)
        self.assertIn("out of space", str(full))
        self.assertEqual(sendmail._spool_failure(PermissionError(13, "denied"), "/s").status, sendmail.EX_NOPERM)
        self.assertEqual(sendmail._spool_failure(SpoolError("fsync failed"), "/s").status, sendmail.EX_TEMPFAIL)
        self.assertEqual(sendmail._spool_failure(SpoolError("no dir"), "/s", creating=True).status,
                         sendmail.EX_CANTCREAT)


# graphsmtp-sendmail input edge cases that must not lose any of the submitted bytes.
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
