"""
graphsmtp-sendmail's command line, option by option: what real sendmail callers pass (cron,
mail(1), PHP's mail(), git send-email, Mastodon) must parse as sendmail would, and what the
gateway cannot honour must fail with EX_USAGE and a line that says why.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import sendmail
from gateway.cli.sendmail import Options, SendmailError, parse_args


class ParseArgsTests(SynchronousTestCase):
    def refused(self, argv: list[str]) -> SendmailError:
        return self.assertRaises(SendmailError, parse_args, argv)

    def test_nothing(self) -> None:
        self.assertEqual(parse_args([]), Options())

    def test_recipients_anywhere(self) -> None:
        opts = parse_args(["a@example.com", "-t", "b@example.com", "-"])
        self.assertEqual(opts.recipients, ["a@example.com", "b@example.com", "-"])
        self.assertTrue(opts.extract)

    def test_double_dash_ends_options(self) -> None:
        opts = parse_args(["-i", "--", "-x", "--help", "c@example.com"])
        self.assertEqual(opts.recipients, ["-x", "--help", "c@example.com"])
        self.assertTrue(opts.ignore_dots)

    def test_help(self) -> None:
        e = self.refused(["a@example.com", "--help"])
        self.assertEqual(e.status, sendmail.EX_OK)
        self.assertIn("usage: graphsmtp-sendmail", str(e))

    def test_long_options(self) -> None:
        opts = parse_args(["--config=/etc/g.toml", "--spool", "/var/spool/g"])
        self.assertEqual((opts.config, opts.spool), ("/etc/g.toml", "/var/spool/g"))
        self.assertEqual(parse_args(["--spool="]).spool, "")

    def test_long_option_without_value(self) -> None:
        e = self.refused(["--spool"])
        self.assertEqual((e.status, str(e)), (sendmail.EX_USAGE, "option --spool needs a value"))

    def test_unknown_long_option(self) -> None:
        e = self.refused(["--verbose"])
        self.assertEqual((e.status, str(e)), (sendmail.EX_USAGE, "unknown option --verbose (see --help)"))
        self.assertEqual(str(self.refused(["--verbose=1"])), "unknown option --verbose=1 (see --help)")

    def test_sender_glued_or_separate(self) -> None:
        self.assertEqual(parse_args(["-fcron@example.com"]).sender, "cron@example.com")
        self.assertEqual(parse_args(["-f", "cron@example.com"]).sender, "cron@example.com")
        self.assertEqual(parse_args(["-r", "old@example.com"]).sender, "old@example.com")
        self.assertEqual(parse_args(["-f", "a@example.com", "-rb@example.com"]).sender, "b@example.com")

    def test_full_name(self) -> None:
        self.assertEqual(parse_args(["-F", "Doe, John"]).full_name, "Doe, John")
        self.assertEqual(parse_args(["-FBackup"]).full_name, "Backup")

    def test_value_missing(self) -> None:
        for flag in "fFrCNRVXBhLpo":
            e = self.refused(["a@example.com", f"-{flag}"])
            self.assertEqual((e.status, str(e)), (sendmail.EX_USAGE, f"option -{flag} needs a value"))

    def test_value_may_look_like_an_option(self) -> None:
        opts = parse_args(["-f", "-t", "x@example.com"])
        self.assertEqual((opts.sender, opts.extract, opts.recipients), ("-t", False, ["x@example.com"]))

    def test_config_or_spool_by_shape(self) -> None:
        existing = self.mktemp()
        with open(existing, "w") as f:
            f.write("")
        self.assertEqual(parse_args(["-C", existing]).config, existing)
        self.assertEqual(parse_args(["-C/etc/mail/g.toml"]).config, "/etc/mail/g.toml")
        opts = parse_args(["-C", os.path.dirname(existing)])
        self.assertEqual((opts.config, opts.spool), (None, os.path.dirname(existing)))

    def test_ignored_value_options_consume_their_value(self) -> None:
        opts = parse_args(["-N", "never", "-R", "hdrs", "-Vx", "-X", "/tmp/log", "-B", "8BITMIME",
                           "-h", "17", "-L", "tag", "-p", "smtp:host", "a@example.com"])
        self.assertEqual(opts, Options(recipients=["a@example.com"]))

    def test_delivery_options(self) -> None:
        self.assertTrue(parse_args(["-oi"]).ignore_dots)
        self.assertTrue(parse_args(["-o", "i"]).ignore_dots)
        self.assertEqual(parse_args(["-odb", "-oem", "-o", "ep", "a@example.com"]), Options(recipients=["a@example.com"]))
        self.assertFalse(parse_args(["-oim"]).ignore_dots)

    def test_modes(self) -> None:
        self.assertEqual(parse_args(["-bm"]), Options())
        self.assertEqual(parse_args(["-b", "a@example.com"]), Options(recipients=["a@example.com"]))
        self.assertTrue(parse_args(["-bv", "a@example.com"]).verify)

    def test_unsupported_modes(self) -> None:
        for mode in ("-bs", "-bp", "-bd", "-bi"):
            e = self.refused([mode])
            self.assertEqual(e.status, sendmail.EX_USAGE)
            self.assertIn(f"mode {mode} is not supported", str(e))

    def test_queue_runs_refused(self) -> None:
        for arg in ("-q", "-q30m"):
            e = self.refused([arg])
            self.assertEqual(e.status, sendmail.EX_USAGE)
            self.assertIn("graphsmtp-queue retry --all", str(e))

    def test_flag_clusters(self) -> None:
        opts = parse_args(["-ti"])
        self.assertEqual((opts.extract, opts.ignore_dots), (True, True))
        opts = parse_args(["-vnmUGA"])
        self.assertEqual(opts, Options())
        self.assertTrue(parse_args(["-it"]).extract)

    def test_unknown_flags(self) -> None:
        for arg in ("-x", "-tx", "-tf", "-ib"):
            e = self.refused([arg])
            self.assertEqual((e.status, str(e)), (sendmail.EX_USAGE, f"unknown option {arg} (see --help)"))
