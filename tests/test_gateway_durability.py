"""
Invariant 1 with a real daemon: every message answered 250 survives SIGKILL at any moment and
is delivered after a restart (at least once, never zero times).
"""

from __future__ import annotations

import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from gateway.testing.harness import read_outbox, send_message
from gateway.testing.processes import commit_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(rb"accepting SMTP on 127\.0\.0\.1 port (\d+)")
DELIVERED = re.compile(rb"delivered ([0-9A-Z]+)")


class DaemonProcess(ProcessProtocol):
    """``twistd -n graphsmtp`` as a child; watches its log for the port and for deliveries."""

    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.delivered: set[bytes] = set()
        self._waiting: list[tuple[set, Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.port.called:
            m = LISTENING.search(self.output)
            if m:
                self.port.callback(int(m.group(1)))
        self.delivered.update(DELIVERED.findall(self.output))
        for waiting in list(self._waiting):
            ids, d = waiting
            if ids <= self.delivered:
                self._waiting.remove(waiting)
                d.callback(None)

    errReceived = outReceived

    def wait_delivered(self, ids: set) -> Deferred:
        d: Deferred = Deferred()
        self._waiting.append((ids, d))
        self.outReceived(b"")
        return d

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


def start_daemon(state_dir: str, *extra: str) -> DaemonProcess:
    proto = DaemonProcess()
    config = os.path.join(state_dir, "graphsmtp.toml")
    if not os.path.exists(config):
        os.makedirs(state_dir, exist_ok=True)
        with open(config, "w") as f:
            f.write('[queue]\nretry_schedule = ["1s"]\njitter = 0.0\n')
    args = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "--logfile=-", "graphsmtp", "--config", config,
        "--listen", "tcp:0:interface=127.0.0.1", "--state-dir", state_dir, "--hostname", "durable.test", *extra,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reactor.spawnProcess(proto, sys.executable, args, env=env, path=ROOT)
    return proto


class SigkillTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_acknowledged_messages_survive_sigkill(self):
        state_dir = os.path.abspath(self.mktemp())
        # The first daemon cannot deliver (its outbox would be inside a regular file), so every
        # acknowledged message is still only in the spool when it is killed.
        os.makedirs(state_dir)
        blocker = os.path.join(state_dir, "not-a-directory")
        open(blocker, "w").close()
        daemon = start_daemon(state_dir, "--outbox", os.path.join(blocker, "outbox"))
        port = yield daemon.port
        acknowledged = []
        for i in range(10):
            message = b"Subject: durable %d\r\nMessage-ID: <durable-%d@test>\r\n\r\nbody %d\r\n" % (i, i, i)
            code, text = yield send_message(port, "a@corp.example", ["b@corp.example"], message)
            self.assertEqual(code, 250)
            acknowledged.append(text.decode().rsplit(" ", 1)[-1])
        # The whole process tree dies at once, right after the last 250, as under the OOM killer
        # or a stop timeout's SIGKILL of the unit.  The commit child is stopped first: when the
        # daemon alone is killed, its child reads the end of its stdin before the kernel sends it
        # its own SIGKILL (PR_SET_PDEATHSIG comes after the daemon's descriptors are closed), and
        # may retire and remove its journal meanwhile (safe: the entries are flushed in place
        # first), which left this test's journal check to chance on a busy machine.
        child = commit_child(daemon.transport.pid)
        self.assertIsNotNone(child)
        os.kill(child, signal.SIGSTOP)
        daemon.transport.signalProcess(signal.SIGKILL)
        yield daemon.ended
        os.kill(child, signal.SIGKILL)

        self.assertEqual(daemon.delivered, set())
        # The 250s were made durable by the commit child's intake journal, left behind by the kill.
        tmp = os.path.join(state_dir, "spool", "tmp")
        self.assertTrue([name for name in os.listdir(tmp) if name.endswith(".journal")])

        outbox = os.path.join(state_dir, "outbox")
        again = start_daemon(state_dir, "--outbox", outbox)
        yield again.port
        yield again.wait_delivered({q.encode() for q in acknowledged})
        again.transport.signalProcess(signal.SIGTERM)
        yield again.ended

        delivered = [m["X-Graphsmtp-Queue-Id"] for m in read_outbox(outbox)]
        for queue_id in acknowledged:
            self.assertIn(queue_id, delivered)
        subjects = {m["Subject"] for m in read_outbox(outbox)}
        self.assertEqual(subjects, {f"durable {i}" for i in range(10)})
        self.assertIn(b"graphsmtp stopped", again.output)
        # Start-up worked the journal through and removed it; the second daemon removed its own.
        self.assertEqual([name for name in os.listdir(tmp) if name.endswith(".journal")], [])
