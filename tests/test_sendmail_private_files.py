"""
graphsmtp-sendmail run by any user reads only what submission needs from the configuration;
the daemon's private files stay unopened.  It loaded the whole file, so the [graph] client
secret (chmod 600, or a systemd credential only the daemon gets) and the [auth] users file
(chmod 600) made every non-root user's sendmail exit 78 in any deployment that has them — the
shipped unit's relative ``client_secret_file = "graph-client-secret"`` included.  Here the files
are absent, which every user (root too) sees the same way another user sees a 0600 file.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.testing.harness import start_gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PrivateFilesTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_sendmail_needs_neither_the_graph_secret_nor_the_users_file(self):
        directory = tempfile.mkdtemp(prefix="gsmtp-", dir="/tmp")  # short: a socket path has ~100 bytes
        self.addCleanup(shutil.rmtree, directory, True)
        socket = os.path.join(directory, "submit.sock")
        gw = yield start_gateway(self, {"local": {"socket": socket}})
        config = os.path.join(directory, "graphsmtp.toml")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                [gateway]
                hostname = "corp.example"
                state_dir = "{directory}/state"
                [[listener]]
                name = "mx"
                endpoint = "tcp:25"
                auth = "required"
                [listener.limits]
                max_message_size = "10MB"
                [auth]
                users_file = "{directory}/users.jsonl"
                [graph]
                tenant_id = "00000000-0000-0000-0000-000000000000"
                client_id = "11111111-1111-1111-1111-111111111111"
                client_secret_file = "graph-client-secret"
                [local]
                socket = "{socket}"
                policies = [ {{ use = "no-such-policy-plugin" }} ]
                """))
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("GRAPHSMTP_CONFIG", None)
        env.pop("CREDENTIALS_DIRECTORY", None)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "gateway.cli.sendmail", "--config", config, "-f", "cron@corp.example",
                             "ops@corp.example"],
            env=env, path=ROOT, reactor=reactor, stdinBytes=b"Subject: nightly\n\nall done\n")
        self.assertEqual((code, err), (0, b""))
        [entry] = yield gw.delivered(1)
        self.assertEqual(entry.envelope.recipients, ("ops@corp.example",))

    def test_size_limit_and_socket_still_come_from_the_file(self):
        from gateway.cli.sendmail import Options, _settings

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "graphsmtp.toml")
        with open(config, "w") as f:
            f.write('[gateway]\nhostname = "corp.example"\n[[listener]]\nname = "mx"\nendpoint = "tcp:25"\n'
                    'tls = "starttls"\ntls_cert = "/nonexistent.pem"\ntls_key = "/nonexistent.key"\n'
                    '[listener.limits]\nmax_message_size = "10MB"\n'
                    f'[local]\nsocket = "{directory}/s.sock"\n[local.limits]\nmax_message_size = "5MB"\n')
        opts = Options()
        opts.config = config
        settings = _settings(opts, {})
        self.assertEqual((settings.hostname, settings.max_size, settings.socket),
                         ("corp.example", 5_000_000, f"{directory}/s.sock"))
