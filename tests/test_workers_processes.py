"""
``[gateway] workers = 2`` with real processes on loopback: ``twistd -n graphsmtp`` binds the
listener, two intake workers adopt it, the main process's queue runner delivers what they accept
into the capture outbox.  Which worker took a message is read from the log line it writes for
it (``[worker <pid>] received <queue id>``, re-emitted by the main process), and a worker is made
to stand aside with SIGSTOP so that the next connection provably goes to the other one.
"""

from __future__ import annotations

import os
import re
import select
import signal
import smtplib
import socket
import sys
import textwrap
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.spool.disk import SpoolDisk
from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.harness import send_message
from gateway.testing.ports import ports_for
from tests.daemon_helpers import ROOT, GatewayDaemon, spawn_gateway, write_private

MESSAGE = b"From: app@corp.example\r\nTo: bob@corp.example\r\nSubject: workers\r\n\r\nbody\r\n"
WORKER_LISTENING = rb"\[worker (\d+)\] listener mx accepting SMTP on 127\.0\.0\.1 port (\d+)"


def config_text(directory: str, workers: object = 2, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        [gateway]
        state_dir = "{directory}/state"
        hostname = "workers.test"
        workers = {workers}
        [queue]
        retry_schedule = ["1s"]
        jitter = 0.0
        shutdown_grace = "20s"
        [[listener]]
        name = "mx"
        endpoint = "tcp:0:interface=127.0.0.1"
        trusted_networks = ["127.0.0.0/8"]
        """) + extra


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def queue_id_of(reply: tuple) -> str:
    match = re.search(r"queued as (\S+)", reply[1].decode())
    assert match, reply
    return match.group(1)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


class _WorkerRig:
    """Starting a gateway with workers and reading what its processes did (no tests here)."""

    timeout = 120

    @inlineCallbacks
    def start(self, workers: object = 2, extra: str = ""):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config_path = os.path.join(self.directory, "graphsmtp.toml")
        with open(self.config_path, "w") as f:
            f.write(config_text(self.directory, workers, extra))
        self.daemon = spawn_gateway(self, self.config_path)
        self.port = yield self.daemon.listening_port("mx")
        self.pids = yield self.workers_listening(2)

    @inlineCallbacks
    def workers_listening(self, count: int, after: int = 0):
        """Fires with the pids of the next ``count`` workers that say they are listening."""
        pids = []
        while len(pids) < count:
            match = yield self.daemon.wait_for(WORKER_LISTENING, after)
            after = match.end()
            self.assertEqual(int(match.group(2)), self.port, "a worker listens on the main process's port")
            pids.append(int(match.group(1)))
        return pids

    def stand_aside(self, pid: int) -> None:
        """Stop ``pid`` accepting (SIGSTOP) until the end of the test or ``resume``."""
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(self.resume, pid)

    def resume(self, pid: int) -> None:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)

    @inlineCallbacks
    def send(self):
        """Fires with (queue id, pid of the worker that logged its receipt)."""
        reply = yield send_message(self.port, "app@corp.example", ["bob@corp.example"], MESSAGE, timeout=60)
        self.assertEqual(reply[0], 250, reply)
        queue_id = queue_id_of(reply)
        match = yield self.daemon.wait_for(rb"\[worker (\d+)\] received " + queue_id.encode() + rb" ")
        return queue_id, int(match.group(1))

    @inlineCallbacks
    def delivered(self, queue_id: str):
        """Waits for the main process (no ``[worker`` prefix) to deliver ``queue_id`` into the outbox."""
        match = yield self.daemon.wait_for(rb"\[gateway[\w.]*QueueRunner#info\] delivered " + queue_id.encode())
        line = self.daemon.output[match.start():self.daemon.output.find(b"\n", match.start())]
        self.assertNotIn(b"[worker", line)
        outbox = os.path.join(self.directory, "state", "outbox", "new")
        self.assertTrue([name for name in os.listdir(outbox) if queue_id in name], os.listdir(outbox))



class WorkerProcessTests(_WorkerRig, TestCase):
    @inlineCallbacks
    def test_two_workers_take_mail_and_the_main_process_delivers_it(self):
        yield self.start()
        self.assertEqual(len(set(self.pids)), 2)
        # Capture mode is the main process's to announce (it delivers): once, not once per worker.
        self.assertEqual(self.daemon.output.count(b"NO MICROSOFT GRAPH CREDENTIALS CONFIGURED"), 1)
        first, first_pid = yield self.send()
        self.assertIn(first_pid, self.pids)
        self.stand_aside(first_pid)
        second, second_pid = yield self.send()
        self.resume(first_pid)
        self.assertNotEqual(first_pid, second_pid)
        self.assertEqual({first_pid, second_pid}, set(self.pids))
        yield self.delivered(first)
        yield self.delivered(second)

    @inlineCallbacks
    def test_metrics_count_what_every_worker_accepted_and_the_sessions_they_hold(self):
        status_port = ports_for(self).port()  # claimed until the test ends: the daemon binds it later
        yield self.start(extra=f'[status]\nendpoint = "tcp:{status_port}:interface=127.0.0.1"\n')
        first, first_pid = yield self.send()
        self.stand_aside(first_pid)
        second, second_pid = yield self.send()
        self.assertNotEqual(first_pid, second_pid)
        self.resume(first_pid)  # a stopped worker cannot report
        # Both workers accepted one: the main process accepted none itself.
        yield self.metrics_show(status_port, 'graphsmtp_smtp_messages_accepted_total{listener="mx"} 2.0')
        held = yield deferToThread(socket.create_connection, ("127.0.0.1", self.port), 30)
        self.addCleanup(held.close)
        greeting = yield deferToThread(held.recv, 512)
        self.assertTrue(greeting.startswith(b"220"), greeting)
        yield self.metrics_show(status_port, 'graphsmtp_smtp_sessions{listener="mx"} 1.0')
        held.close()
        yield self.metrics_show(status_port, 'graphsmtp_smtp_sessions{listener="mx"} 0.0')

    @inlineCallbacks
    def metrics_show(self, status_port: int, line: str, attempts: int = 150):
        """Polls /metrics until it has ``line`` (workers report about once a second)."""
        text = ""
        for _ in range(attempts):
            text = yield deferToThread(_get, f"http://127.0.0.1:{status_port}/metrics")
            if line in text.splitlines():
                return text
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"/metrics never showed {line!r}; last:\n" + "\n".join(
            l for l in text.splitlines() if "smtp" in l))

    @inlineCallbacks
    def test_a_killed_worker_loses_nothing_acknowledged_and_is_restarted(self):
        yield self.start()
        queue_id, pid = yield self.send()
        mark = len(self.daemon.output)
        os.kill(pid, signal.SIGKILL)
        yield self.daemon.wait_for(rb"intake worker \d \(pid " + str(pid).encode() + rb"\) ended after [\d.]+s "
                                   rb"\(killed by signal 9\); restarting it in", mark)
        yield self.delivered(queue_id)
        [restarted] = yield self.workers_listening(1, mark)
        self.assertNotIn(restarted, self.pids)
        # The restarted worker takes mail: with the surviving one standing aside, it must.
        [survivor] = [p for p in self.pids if p != pid]
        self.stand_aside(survivor)
        again, again_pid = yield self.send()
        self.assertEqual(again_pid, restarted)
        yield self.delivered(again)

    @inlineCallbacks
    def test_sigterm_lets_a_transaction_in_data_finish_and_stops_every_process(self):
        yield self.start()
        client = yield deferToThread(smtplib.SMTP, "127.0.0.1", self.port, timeout=60)
        self.addCleanup(lambda: deferToThread(client.close))
        yield deferToThread(client.ehlo, "client.test")
        yield deferToThread(client.mail, "app@corp.example")
        yield deferToThread(client.rcpt, "bob@corp.example")
        code, _ = yield deferToThread(client.docmd, "DATA")
        self.assertEqual(code, 354)
        yield deferToThread(client.send, MESSAGE)
        mark = len(self.daemon.output)
        self.daemon.signal(signal.SIGTERM)
        # Both workers stop listening (the transaction in DATA keeps its worker running)...
        for _ in self.pids:
            match = yield self.daemon.wait_for(rb"\[worker \d+\] \(TCP Port \d+ Closed\)", mark)
            mark = match.end()
        # ...and the message the client finishes now is still accepted and kept.
        code, text = yield deferToThread(lambda: (client.send(b".\r\n"), client.getreply())[1])
        self.assertEqual(code, 250, text)
        queue_id = queue_id_of((code, text))
        yield self.daemon.ended
        # twistd ends itself with the signal it was stopped by, after a clean shutdown:
        self.assertIn(b"Server Shut Down.", self.daemon.output)
        self.assertNotIn(b"Traceback", self.daemon.output)
        for pid in self.pids:
            self.assertFalse(alive(pid), f"worker {pid} outlived the main process")
        state = os.path.join(self.directory, "state")
        kept = os.listdir(os.path.join(state, "spool", "queue")) + os.listdir(os.path.join(state, "outbox", "new"))
        self.assertTrue([name for name in kept if queue_id in name], kept)

    @inlineCallbacks
    def test_workers_stop_when_the_main_process_is_killed(self):
        yield self.start()
        exits = [os.pidfd_open(pid) for pid in self.pids]  # readable once the process has exited
        for fd in exits:
            self.addCleanup(os.close, fd)
        self.daemon.signal(signal.SIGKILL)
        yield self.daemon.ended

        def all_exited():
            pending = list(exits)
            while pending:
                ready, _, _ = select.select(pending, [], [], 60)
                if not ready:
                    return False
                pending = [fd for fd in pending if fd not in ready]
            return True

        self.assertTrue((yield deferToThread(all_exited)), "a worker outlived its main process by a minute")
        # Nothing holds the spool lock any more: another gateway could take the spool over.
        disk = SpoolDisk(os.path.join(self.directory, "state", "spool"))
        self.assertIsNone(disk.daemon_pid())

    @inlineCallbacks
    def test_sighup_reaches_every_worker(self):
        yield self.start()
        mark = len(self.daemon.output)
        self.daemon.signal(signal.SIGHUP)
        yield self.daemon.wait_for(rb"SIGHUP passed on to 2 intake worker\(s\)", mark)
        seen = set()
        while len(seen) < 2:
            match = yield self.daemon.wait_for(rb"\[worker (\d+)\] SIGHUP: configuration reloaded", mark)
            mark = match.end()
            seen.add(int(match.group(1)))
        self.assertEqual(seen, set(self.pids))

    @inlineCallbacks
    def test_workers_zero_is_one_configuration_line_and_exit_78(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(config_text(directory, workers=0))
        daemon = spawn_gateway(self, path)
        exit_code = yield daemon.ended
        self.assertEqual(exit_code, 78)
        self.assertIn(b"gateway.workers: must be from 1 to 64 (1 = a single process, no workers), not 0",
                      daemon.errors)


class WorkerGraphTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_tls_listeners_in_workers_deliver_through_graph(self):
        """STARTTLS and implicit TLS (wrapped around the adopted socket) in workers; Graph from the main."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        fake = yield start_fake_graph(reactor, os.path.join(directory, "fake"))
        self.addCleanup(fake.stop)
        issued = fake.ca.issue(basename="smtp")
        secret = write_private(os.path.join(directory, "client-secret"), fake.client_secret)
        path = os.path.join(directory, "graphsmtp.toml")
        tls = f'tls_cert = "{issued.cert_path}"\ntls_key = "{issued.key_path}"\ntrusted_networks = ["127.0.0.0/8"]\n'
        with open(path, "w") as f:
            f.write(textwrap.dedent(f"""\
                [gateway]
                state_dir = "{directory}/state"
                hostname = "workers.test"
                workers = 2
                [queue]
                retry_schedule = ["1s"]
                jitter = 0.0
                [[listener]]
                name = "submission"
                endpoint = "tcp:0:interface=127.0.0.1"
                tls = "starttls"
                """) + tls + textwrap.dedent("""\
                [[listener]]
                name = "smtps"
                endpoint = "tcp:0:interface=127.0.0.1"
                tls = "implicit"
                """) + tls + textwrap.dedent(f"""\
                [graph]
                tenant_id = "{fake.tenant_id}"
                client_id = "{fake.client_id}"
                client_secret_file = "{secret}"
                authority = "{fake.authority}"
                graph_url = "{fake.graph_url}"
                ca_bundle = "{fake.ca_path}"
                """))
        sent = []
        both = Deferred()
        fake.on_sent.append(lambda message: (sent.append(message), len(sent) == 2 and both.callback(None)))
        daemon = spawn_gateway(self, path)
        submission = yield daemon.listening_port("submission")
        smtps = yield daemon.listening_port("smtps")
        after = 0
        for _ in range(4):  # both workers, both listeners
            match = yield daemon.wait_for(rb"\[worker \d+\] listener \w+ accepting SMTP", after)
            after = match.end()
        message = MESSAGE.replace(b"bob@corp.example", b"bob@fabrikam.test")
        code, _ = yield send_message(submission, "app@corp.example", ["bob@fabrikam.test"], message,
                                     starttls=True, ca_path=fake.ca_path, timeout=60)
        self.assertEqual(code, 250)
        code, _ = yield send_message(smtps, "app@corp.example", ["carol@fabrikam.test"], message,
                                     implicit_tls=True, ca_path=fake.ca_path, timeout=60)
        self.assertEqual(code, 250)
        yield both
        self.assertEqual(sorted(r for m in sent for r in m.recipients), ["bob@fabrikam.test", "carol@fabrikam.test"])
        self.assertNotIn(b"Traceback", daemon.output)


_SOCKET_ACTIVATED_BOOTSTRAP = (
    "import os\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='smtp')\n"
    "from twisted.scripts.twistd import run; run()\n"
)


class SocketActivationTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_a_socket_systemd_passed_to_the_main_process_is_served_by_the_workers(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(50)
        port = sock.getsockname()[1]
        path = os.path.join(directory, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(config_text(directory).replace('"tcp:0:interface=127.0.0.1"', '"systemd:domain=INET:name=smtp"'))
        daemon = GatewayDaemon()
        args = [sys.executable, "-c", _SOCKET_ACTIVATED_BOOTSTRAP, "-n", "--pidfile=", "--logfile=-",
                "graphsmtp", "--config", path]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        reactor.spawnProcess(daemon, sys.executable, args, env=env, path=ROOT,
                             childFDs={0: "w", 1: "r", 2: "r", 3: sock.fileno()})
        self.addCleanup(daemon.stop)
        sock.close()  # the daemon holds it now, as under systemd
        after = 0
        for _ in range(2):
            match = yield daemon.wait_for(rb"\[worker \d+\] listener mx accepting SMTP on 127\.0\.0\.1 port "
                                          + str(port).encode(), after)
            after = match.end()
        reply = yield send_message(port, "app@corp.example", ["bob@corp.example"], MESSAGE, timeout=60)
        self.assertEqual(reply[0], 250, reply)
        queue_id = queue_id_of(reply)
        yield daemon.wait_for(rb"\[worker \d+\] received " + queue_id.encode())
        yield daemon.wait_for(rb"QueueRunner#info\] delivered " + queue_id.encode())


class ProxyProtocolTests(_WorkerRig, TestCase):
    @inlineCallbacks
    def test_the_proxy_header_is_read_by_the_worker_that_takes_the_connection(self):
        """PROXY works per connection, so workers behind a load balancer see the real client."""
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        path = os.path.join(self.directory, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(config_text(self.directory).replace('trusted_networks = ["127.0.0.0/8"]', textwrap.dedent("""\
                trusted_networks = ["192.0.2.0/24"]
                proxy_protocol = true
                proxy_trusted_networks = ["127.0.0.1/32"]""")))
        self.daemon = spawn_gateway(self, path)
        self.port = yield self.daemon.listening_port("mx")
        yield self.workers_listening(2)

        def converse() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), 60) as conn:
                conn.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
                stream = conn.makefile("rb")
                replies = [stream.readline()]
                for command in (b"EHLO client.test", b"MAIL FROM:<app@corp.example>", b"RCPT TO:<bob@corp.example>",
                                b"DATA"):
                    conn.sendall(command + b"\r\n")
                    line = stream.readline()
                    while line[3:4] == b"-":
                        line = stream.readline()
                    replies.append(line)
                conn.sendall(MESSAGE + b".\r\n")
                replies.append(stream.readline())
                conn.sendall(b"QUIT\r\n")
                return b"".join(replies)

        replies = yield deferToThread(converse)
        self.assertIn(b"\r\n250 2.0.0 Ok: queued as ", replies)
        queue_id = re.search(rb"queued as (\S+)", replies).group(1)
        yield self.daemon.wait_for(rb"\[worker \d+\] received " + queue_id + rb" from client\.test\[192\.0\.2\.7\]")
        yield self.delivered(queue_id.decode())
