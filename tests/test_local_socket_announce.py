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
from twisted.trial.unittest import TestCase

from gateway.testing.harness import start_gateway
from gateway.testing.logs import LogCapture


class LocalSocketAnnounceTests(TestCase):
    @inlineCallbacks
    def test_start_up_line_names_the_socket_path(self):
        directory = tempfile.mkdtemp(prefix="gsmtp-", dir="/tmp")  # short: a socket path has ~100 bytes
        self.addCleanup(shutil.rmtree, directory, True)
        socket = os.path.join(directory, "submit.sock")
        log = LogCapture.install(self)
        yield start_gateway(self, {"local": {"socket": socket}})
        announced = [line for line in log.messages() if line.startswith("listener sendmail accepting SMTP")]
        self.assertEqual(announced, [f"listener sendmail accepting SMTP on UNIX socket {socket} (tls=none, auth=none)"])
