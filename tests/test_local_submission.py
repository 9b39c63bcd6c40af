"""
sendmail for every local user (issue 12 item 3): graphsmtp-sendmail run as another uid submits
over the daemon's [local] UNIX socket, the daemon identifies the user by SO_PEERCRED
(``unix:nobody``), and the per-user allowed senders and the [local] policy chain refuse what
they would refuse on an SMTP listener — with EX_NOPERM and the reason.  When the daemon is
down only the gateway's own user may fall back to the drop-off directory.

Running a command as another uid needs root (setuid); these tests fail, not skip, without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.cli import sendmail
from gateway.spool.disk import SpoolDisk
from gateway.testing.harness import LOOPBACK_EPHEMERAL, send_message, start_gateway
from tests.sendmail_helpers import daemon_spool
from tests.test_policy_registry import PluginDirectoryMixin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
OTHER_UID = 65534  # "nobody" on Debian
# Imports and the first configuration read happen as root (the interpreter lives under /root,
# which other users cannot read); then the process becomes OTHER_UID and runs the real command.
AS_OTHER_USER = """
import os, sys
from gateway.cli import sendmail
uid, argv = int(sys.argv[1]), sys.argv[2:]
sendmail._settings(sendmail.parse_args(argv), os.environ)
import pwd
entry = pwd.getpwuid(uid)
os.setgroups([])
os.setgid(entry.pw_gid)
os.setuid(uid)
sys.exit(sendmail.main(argv))
"""
SUBJECT_FILTER = {"use": "subject-filter", "words": ["password reset"], "tag": "X-Subject-Filter"}


def require_root(case):
    if os.geteuid() != 0:
        case.fail("these tests run graphsmtp-sendmail as another uid, which needs root (setuid); "
                  "run the suite as root (as scripts/test.sh does in CI)")


def short_directory(case) -> str:
    """A directory other users can enter, with a path short enough for a UNIX socket name."""
    path = tempfile.mkdtemp(prefix="gsmtp-", dir="/tmp")
    os.chmod(path, 0o755)
    case.addCleanup(shutil.rmtree, path, True)
    return path


def write_config(directory: str, text: str) -> str:
    path = os.path.join(directory, "sendmail.toml")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def environment():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("GRAPHSMTP_CONFIG", None)
    return env


class SocketSubmissionTests(PluginDirectoryMixin, TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self):
        require_root(self)
        write = self.plugin_dir()
        with open(os.path.join(DOCS, "example_policy.py"), encoding="utf-8") as f:
            write("h5test_example_policy", f.read())
        directory = short_directory(self)
        self.socket = os.path.join(directory, "submit.sock")
        self.gw = yield start_gateway(self, {
            "listener": [{"name": "default", "endpoint": LOOPBACK_EPHEMERAL, "trusted_networks": ["127.0.0.0/8"],
                          "policies": [SUBJECT_FILTER]}],
            "local": {"socket": self.socket, "policies": [SUBJECT_FILTER],
                      "allowed_senders": {"nobody": ["nobody@corp.example"], "*": ["*@corp.example"]}},
        })
        self.config = write_config(directory, f'[gateway]\nhostname = "corp.example"\n[local]\nsocket = "{self.socket}"\n')

    def sendmail_as(self, uid, args, stdin: bytes):
        return getProcessOutputAndValue(
            sys.executable, ["-c", AS_OTHER_USER, str(uid), "--config", self.config, *args],
            env=environment(), path=ROOT, reactor=reactor, stdinBytes=stdin)

    @inlineCallbacks
    def test_other_user_is_identified_and_delivered(self):
        yield self.start()
        self.assertEqual(oct(os.stat(self.socket).st_mode & 0o777), "0o666")
        out, err, code = yield self.sendmail_as(OTHER_UID, ["ops@corp.example"], b"Subject: nightly\n\n.hidden dot\nok\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(err, b"")
        [entry] = yield self.gw.delivered(1)
        self.assertEqual(entry.provenance.auth_identity, "unix:nobody")
        self.assertEqual(entry.provenance.listener, "sendmail")
        self.assertEqual(entry.envelope.sender, "nobody@corp.example")
        [message] = self.gw.outbox_messages()
        self.assertEqual(message["Subject"], "nightly")
        self.assertEqual(message["X-Subject-Filter"], "passed")  # the [local] chain ran
        self.assertEqual(message["From"], "nobody <nobody@corp.example>")
        self.assertIn(".hidden dot\nok", message.get_content())
        self.assertNotIn("nobody", message["Received"])  # the user's name stays out of the trace

    @inlineCallbacks
    def test_sender_not_allowed_for_the_user_is_ex_noperm(self):
        yield self.start()
        out, err, code = yield self.sendmail_as(OTHER_UID, ["-f", "boss@corp.example", "ops@corp.example"],
                                                b"Subject: pay me\n\nx\n")
        self.assertEqual(code, sendmail.EX_NOPERM, err)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(b"5.7.1", err)
        self.assertIn(b"unix:nobody", err)
        self.assertEqual(self.gw.recorder.events, [])

    @inlineCallbacks
    def test_forged_from_header_is_refused_as_on_a_listener(self):
        yield self.start()
        out, err, code = yield self.sendmail_as(OTHER_UID, ["-f", "nobody@corp.example", "ops@corp.example"],
                                                b"From: CEO <ceo@corp.example>\nSubject: urgent\n\nx\n")
        self.assertEqual(code, sendmail.EX_NOPERM, err)
        self.assertIn(b"From header address <ceo@corp.example> is not allowed for login unix:nobody", err)

    @inlineCallbacks
    def test_subject_refused_over_smtp_is_refused_through_sendmail(self):
        yield self.start()
        smtp_reply = yield send_message(self.gw.port(), "a@corp.example", ["b@corp.example"],
                                        b"From: a@corp.example\r\nSubject: Password Reset\r\n\r\nx\r\n")
        self.assertEqual(smtp_reply, (550, b"5.7.1 Subject not allowed"))
        out, err, code = yield self.sendmail_as(OTHER_UID, ["-f", "nobody@corp.example", "ops@corp.example"],
                                                b"Subject: Password Reset\n\nx\n")
        self.assertEqual(code, sendmail.EX_NOPERM, err)
        self.assertIn(b"550 5.7.1 Subject not allowed", err)
        self.assertEqual(self.gw.recorder.events, [])
        self.assertEqual(SpoolDisk(self.gw.config.spool.directory).queue_ids(), [])


class DaemonDownTests(SynchronousTestCase):
    """The socket is configured but nobody listens: only the gateway's own user may drop off."""

    def setUp(self):
        require_root(self)
        directory = short_directory(self)
        self.spool = daemon_spool(self, os.path.join(directory, "spool"))
        self.config = write_config(directory, f'[spool]\ndirectory = "{self.spool}"\n'
                                              f'[local]\nsocket = "{os.path.join(directory, "submit.sock")}"\n')

    def run_as(self, uid):
        args = [sys.executable, "-c", AS_OTHER_USER, str(uid), "--config", self.config, "ops@corp.example"]
        return subprocess.run(args, input=b"Subject: s\n\nx\n", capture_output=True, env=environment(),
                              cwd=ROOT, timeout=60)

    def test_other_user_gets_tempfail_and_nothing_is_written(self):
        result = self.run_as(OTHER_UID)
        self.assertEqual(result.returncode, sendmail.EX_TEMPFAIL, result.stderr)
        self.assertIn(b"daemon is not running", result.stderr)
        self.assertEqual(os.listdir(os.path.join(self.spool, "incoming")), [])

    def test_gateway_user_falls_back_to_the_drop_off(self):
        result = self.run_as(os.stat(self.spool).st_uid)
        self.assertEqual(result.returncode, 0, result.stderr)
        disk = SpoolDisk(self.spool)
        self.assertEqual(len(disk.queue_ids(disk.layout.incoming)), 1)


class ProtocolPieceTests(SynchronousTestCase):
    def test_dot_stuffing_only_at_line_starts(self):
        from gateway.cli.local_submit import _stream

        sent = []

        class Client:
            def send(self, data):
                sent.append(data)

        _stream(Client(), [b"H: x\r\n\r\n", b"", b".first\r\n", b"long piece .", b".still the same line\r\n", b"..\r\n", b"end"])
        self.assertEqual(b"".join(sent),
                         b"H: x\r\n\r\n..first\r\nlong piece ..still the same line\r\n...\r\nend\r\n.\r\n")

    def test_refusal_statuses(self):
        from gateway.cli.local_submit import (
            EX_DATAERR,
            EX_NOPERM,
            EX_TEMPFAIL,
            queue_id_of,
            status_for,
        )

        self.assertEqual(status_for(550, "5.7.1 Subject not allowed"), EX_NOPERM)
        self.assertEqual(status_for(552, "5.3.4 Message too big"), EX_DATAERR)
        self.assertEqual(status_for(550, "no enhanced code"), EX_DATAERR)
        self.assertEqual(status_for(451, "4.3.0 Local error"), EX_TEMPFAIL)
        self.assertEqual(queue_id_of("2.0.0 Ok: queued as 1GA4GC1WG00VV189N6C"), "1GA4GC1WG00VV189N6C")

    def test_listener_name_sendmail_is_reserved_with_a_socket(self):
        from gateway.config import ConfigError
        from gateway.config.loader import build_config

        data = {"listener": [{"name": "sendmail", "endpoint": "tcp:2525"}], "local": {"socket": "/tmp/x.sock"}}
        e = self.assertRaises(ConfigError, build_config, data, {}, {}, "/tmp")
        self.assertIn("listener.sendmail.name", str(e))
        # the reference configuration's listener is called "local": no clash with [local]
        data = {"listener": [{"name": "local", "endpoint": "tcp:2525"}], "local": {"socket": "/tmp/x.sock"}}
        self.assertEqual(build_config(data, {}, {}, "/tmp").local.listener().name, "sendmail")
        self.assertEqual(build_config({"local": {"socket": ""}}, {}, {}, "/tmp").local.socket, None)
        e = self.assertRaises(ConfigError, build_config, {"local": {"mode": "rw"}}, {}, {}, "/tmp")
        self.assertIn("local.mode", str(e))


class DropOffJudgedAtImportTests(PluginDirectoryMixin, TestCase):
    """The gateway's own user's drop-offs (daemon down) meet the [local] chain when imported."""

    timeout = 60

    def setUp(self):
        write = self.plugin_dir()
        with open(os.path.join(DOCS, "example_policy.py"), encoding="utf-8") as f:
            write("h5test_example_policy", f.read())
        directory = short_directory(self)
        self.spool = daemon_spool(self, os.path.join(directory, "spool"))
        self.gateway_data = {"spool": {"directory": self.spool},
                             "local": {"socket": os.path.join(directory, "submit.sock"), "policies": [SUBJECT_FILTER]}}
        # sendmail's view: a socket nobody listens on, so the spool owner falls back to the drop-off
        self.sendmail_config = write_config(directory, f'[spool]\ndirectory = "{self.spool}"\n[local]\n'
                                                       f'socket = "{os.path.join(directory, "down.sock")}"\n')

    def drop_off(self, subject: bytes) -> int:
        import io
        return sendmail.main(["--config", self.sendmail_config, "ops@corp.example"],
                             stdin=io.BytesIO(b"Subject: " + subject + b"\n\nx\n"), environ={})

    @inlineCallbacks
    def test_drop_offs_made_while_down_are_judged_at_start(self):
        self.assertEqual(self.drop_off(b"Password Reset"), 0)
        self.assertEqual(self.drop_off(b"backup done"), 0)
        gw = yield start_gateway(self, self.gateway_data)
        [delivered] = yield gw.delivered(1)
        [message] = gw.outbox_messages()
        self.assertEqual(message["Subject"], "backup done")
        disk = SpoolDisk(self.spool)
        [refused] = disk.queue_ids(disk.layout.failed)
        self.assertIn("refused by the [local] policy chain at import: 550 5.7.1 Subject not allowed",
                      disk.failure_reason(refused))
        self.assertNotEqual(refused, delivered.queue_id)

    @inlineCallbacks
    def test_drop_off_arriving_while_running_is_judged(self):
        gw = yield start_gateway(self, self.gateway_data)
        from twisted.internet.threads import deferToThread
        status = yield deferToThread(self.drop_off, b"your password reset link")
        self.assertEqual(status, 0)
        gw.components.runner.kick()
        status = yield deferToThread(self.drop_off, b"fine")
        self.assertEqual(status, 0)
        [delivered] = yield gw.delivered(1)
        self.assertEqual(gw.outbox_messages()[0]["Subject"], "fine")
        disk = SpoolDisk(self.spool)
        self.assertEqual(len(disk.queue_ids(disk.layout.failed)), 1)


class PeerCredentialTests(SynchronousTestCase):
    def test_peer_uid_is_the_kernels_word(self):
        import socket

        from gateway.smtp.local import peer_uid, user_name

        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(a.close)
        self.addCleanup(b.close)

        class Transport:
            def getHandle(self):
                return a

        self.assertEqual(peer_uid(Transport()), os.getuid())
        self.assertIsNone(peer_uid(object()))
        self.assertEqual(user_name(0), "root")
        self.assertEqual(user_name(4_000_000_000), "4000000000")  # no passwd entry: the number
