"""
graphsmtp-sendmail refuses what the SMTP intake refuses at the end of DATA (550 5.6.0): a NUL
octet, or a line longer than 998 octets (RFC 5322 §2.1.1, §2.3).  The drop-off path used to
accept both and hand the next hop a message it would have to guess about; now the command
exits EX_DATAERR with one line naming the problem, and nothing is left in the spool.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.cli import sendmail
from gateway.cli.sendmail_args import SendmailError
from gateway.cli.sendmail_input import LineRule
from gateway.mail.lines import MESSAGE_LINE_LIMIT
from gateway.spool.disk import SpoolDisk
from gateway.testing.harness import start_gateway
from tests.sendmail_helpers import daemon_spool
from tests.test_cli_sendmail import ROOT, run_subprocess


class LineRuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))

    def run_main(self, args: list[str], data: bytes) -> int:
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            return sendmail.main(["--spool", self.spool_dir, *args], stdin=io.BytesIO(data), environ={})
        finally:
            self.stderr, sys.stderr = sys.stderr.getvalue(), stderr

    def spool_files(self) -> list[str]:
        found = []
        for directory, _, names in os.walk(self.spool_dir):
            found.extend(os.path.relpath(os.path.join(directory, n), self.spool_dir) for n in names)
        return sorted(f for f in found if f != "lock")

    def assertRefused(self, data: bytes, problem: str, args: tuple[str, ...] = ("a@example.com",)) -> None:
        before = self.spool_files()
        status = self.run_main(list(args), data)
        self.assertEqual(status, sendmail.EX_DATAERR, self.stderr)
        self.assertEqual(len(self.stderr.splitlines()), 1, self.stderr)
        self.assertIn(problem, self.stderr)
        self.assertEqual(self.spool_files(), before)

    def test_nul_in_body_refused(self) -> None:
        self.assertRefused(b"Subject: s\n\nbefore\0after\n", "NUL")

    def test_long_body_line_refused(self) -> None:
        self.assertRefused(b"Subject: s\n\n" + b"x" * 1200 + b"\n", "998")

    def test_long_line_without_final_newline_refused(self) -> None:
        self.assertRefused(b"Subject: s\n\n" + b"x" * 1200, "998")

    def test_long_header_line_refused(self) -> None:
        self.assertRefused(b"Subject: " + b"x" * 1200 + b"\n\nbody\n", "998")

    def test_nul_in_header_refused(self) -> None:
        self.assertRefused(b"Subject: a\0b\n\nbody\n", "NUL")

    def test_line_longer_than_one_read_refused(self) -> None:
        # Standard input is read in pieces of at most 1 MiB: the length counts across them.
        self.assertRefused(b"Subject: s\n\n" + b"y" * (3 << 20) + b"\nend\n", "998")

    def test_long_line_refused_with_extract(self) -> None:
        self.assertRefused(b"To: b@example.com\n\n" + b"z" * 999 + b"\r\n", "998", args=("-t",))

    def test_longest_allowed_line_accepted(self) -> None:
        line = b"x" * MESSAGE_LINE_LIMIT
        status = self.run_main(["a@example.com"], b"Subject: s\n\n" + line + b"\r\n" + line + b"\n" + line)
        self.assertEqual(status, 0, self.stderr)
        [stored] = [f for f in self.spool_files() if f.endswith(".msg")]
        with open(os.path.join(self.spool_dir, stored), "rb") as f:
            self.assertTrue(f.read().endswith(b"\r\n\r\n" + (line + b"\r\n") * 3))

    def test_subprocess_exit_status(self) -> None:
        result = run_subprocess(["--spool", self.spool_dir, "a@example.com"], b"Subject: s\n\nx\0y\n")
        self.assertEqual(result.returncode, sendmail.EX_DATAERR, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn(b"NUL", result.stderr)
        self.assertEqual(self.spool_files(), [])


class ThroughTheDaemonTests(TestCase):
    """With a [local] socket the same rule holds, and the same one line explains it."""

    timeout = 60

    @inlineCallbacks
    def test_long_line_refused_and_nothing_queued(self):
        directory = tempfile.mkdtemp(prefix="gsmtp-", dir="/tmp")  # short enough for a socket name
        self.addCleanup(shutil.rmtree, directory, True)
        socket = os.path.join(directory, "submit.sock")
        gw = yield start_gateway(self, {"local": {"socket": socket}})
        config = os.path.join(directory, "sendmail.toml")
        with open(config, "w") as f:
            f.write(f'[gateway]\nhostname = "corp.example"\n[local]\nsocket = "{socket}"\n')
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("GRAPHSMTP_CONFIG", None)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "gateway.cli.sendmail", "--config", config, "ops@corp.example"],
            env=env, path=ROOT, reactor=reactor, stdinBytes=b"Subject: s\n\nok\n" + b"x" * 1200 + b"\n")
        self.assertEqual(code, sendmail.EX_DATAERR, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(b"998", err)
        self.assertEqual(SpoolDisk(gw.config.spool.directory).queue_ids(), [])
        self.assertEqual(gw.recorder.events, [])


class LineRuleUnitTests(SynchronousTestCase):
    """L{LineRule} on pieces as L{LineReader} hands them out: whole lines, long lines in parts."""

    def check(self, *pieces: bytes) -> None:
        rule = LineRule()
        for piece in pieces:
            rule.check(piece)

    def test_line_at_the_limit_in_pieces(self) -> None:
        self.check(b"a" * 500, b"b" * 498 + b"\r\n", b"c" * 998 + b"\r\n", b"short\r\n")

    def test_line_over_the_limit_in_pieces(self) -> None:
        e = self.assertRaises(SendmailError, self.check, b"a" * 500, b"b" * 499 + b"\r\n")
        self.assertEqual(e.status, sendmail.EX_DATAERR)

    def test_unfinished_line_over_the_limit(self) -> None:
        self.assertRaises(SendmailError, self.check, b"ok\r\n", b"a" * 999)

    def test_several_lines_in_one_piece(self) -> None:
        # A lone CR becomes CRLF, so one piece may hold several lines; each counts alone.
        self.check(b"a" * 998 + b"\r\n" + b"b" * 998 + b"\r\n" + b"c" * 10)
        self.assertRaises(SendmailError, self.check, b"a\r\n" + b"b" * 999 + b"\r\nc\r\n")

    def test_nul(self) -> None:
        e = self.assertRaises(SendmailError, self.check, b"ok\r\n", b"a\0b\r\n")
        self.assertIn("NUL", str(e))
