"""
The start-up line of the [local] submission socket names its path: it said
"listener sendmail accepting SMTP on ? port ?" (a UNIX address has no host and port), so an
admin could not tell from the log where graphsmtp-sendmail must connect.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from gateway.testing.harness import start_gateway


class LocalSocketAnnounceTests(TestCase):
    @inlineCallbacks
    def test_start_up_line_names_the_socket_path(self):
        directory = tempfile.mkdtemp(prefix="gsmtp-", dir="/tmp")  # short: a socket path has ~100 bytes
        self.addCleanup(shutil.rmtree, directory, True)
        socket = os.path.join(directory, "submit.sock")
        lines: list = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield start_gateway(self, {"local": {"socket": socket}})
        announced = [line for line in lines if line.startswith("listener sendmail accepting SMTP")]
        self.assertEqual(announced, [f"listener sendmail accepting SMTP on UNIX socket {socket} (tls=none, auth=none)"])
