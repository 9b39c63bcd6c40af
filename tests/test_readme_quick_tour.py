"""
The README's quick tour works as printed, against the gateway of its first command (started
without a configuration: state in ./graphsmtp-data).

Its graphsmtp-sendmail line had no --spool: with no configuration anywhere sendmail exits 78
(EX_CONFIG) by design (issue 9 finding 4), so the tour's second step failed for everyone who
followed it.  The fake Graph's sent-mail directory is checked against its --help as well.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.testing.harness import start_gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_tour() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Quick tour", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```sh\n(.*?)```", section, re.S)
    return block.splitlines()


class QuickTourSendmailTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_sendmail_line_reaches_the_gateway_of_the_first_command(self):
        [line] = [line for line in quick_tour() if "graphsmtp-sendmail" in line]
        printf, command = line.split("|", 1)
        stdin = shlex.split(printf)[1].encode().decode("unicode_escape").encode()
        argv = shlex.split(command)
        self.assertEqual(argv[0], ".venv/bin/graphsmtp-sendmail")
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        # What `twistd -n graphsmtp` without --config uses: ./graphsmtp-data under its directory.
        gw = yield start_gateway(self, {"gateway": {"state_dir": os.path.join(cwd, "graphsmtp-data")}})
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("GRAPHSMTP_CONFIG", None)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "gateway.cli.sendmail", *argv[1:]], env=env, path=cwd, reactor=reactor,
            stdinBytes=stdin)
        self.assertEqual(code, 0, err)
        [entry] = yield gw.delivered(1)
        self.assertEqual(entry.envelope.sender, "cron@corp.example")


class FakeGraphDirectoryTests(SynchronousTestCase):
    def test_documented_sent_directory_is_the_default(self):
        from gateway.testing import fake_graph_cli

        parser = fake_graph_cli.build_parser()
        self.assertEqual(os.path.normpath(parser.get_default("directory")), "fake-graph")
        for doc in ("README.md", "docs/microsoft365-setup.md"):
            with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
                text = f.read()
            self.assertNotIn("/tmp/fake-graph/sent", text, doc)
            self.assertIn("./fake-graph/sent/", text, doc)
