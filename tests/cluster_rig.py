"""
A cluster on loopback for tests and ``bench/bench_cluster.py``: ``twistd graphsmtp`` processes
sharing one ``redis-server`` (``[cluster]``), behind a real HAProxy built from the shipped
``etc/haproxy/graphsmtp.cfg`` (TCP mode, send-proxy-v2, health checks on ``/healthz``), all
delivering into one in-process fake Graph that records every request's arrival time and the
requests in flight per mailbox.

Every wait is on an event (a log line, a message arriving at the fake, a process ending); the
only retry loop is connecting to HAProxy's port, which has no "ready" line to wait for.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import tempfile
from email.message import EmailMessage
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.policy import start_redis_server
from gateway.testing.ports import ports_for
from tests.daemon_helpers import ROOT, GatewayDaemon, spawn_gateway, write_private

HAPROXY_TEMPLATE = os.path.join(ROOT, "etc", "haproxy", "graphsmtp.cfg")
_SEQ = re.compile(rb"^Subject: cluster-message-(\d+)\r?$", re.M)
_BY = re.compile(rb"\tby (gw\d+)\.test \(graphsmtp\)")


def haproxy_config(front_port: int, nodes: list, inter: str = "500ms") -> str:
    """The shipped configuration with this rig's addresses (and a faster check interval)."""
    with open(HAPROXY_TEMPLATE) as f:
        text = f.read()
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("server "):
            continue
        if stripped.startswith("bind "):
            line = f"    bind 127.0.0.1:{front_port}"
        if stripped.startswith("default-server"):
            line = line.replace("inter 2s", f"inter {inter}")
        lines.append(line)
    for node in nodes:
        lines.append(f"    server {node.name} 127.0.0.1:{node.smtp_port} check port {node.status_port}")
    return "\n".join(lines) + "\n"


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class Node:
    """One gateway: its ports, configuration file and (while running) its daemon."""

    def __init__(self, rig: "ClusterRig", index: int) -> None:
        self.rig = rig
        self.name = f"gw{index}"
        self.smtp_port = rig.ports.port()
        self.status_port = rig.ports.port()
        self.directory = os.path.join(rig.directory, self.name)
        os.makedirs(self.directory)
        self.config_path = os.path.join(self.directory, "graphsmtp.toml")
        self.daemon: Optional[GatewayDaemon] = None

    def write_config(self) -> None:
        rig, fake = self.rig, self.rig.fake
        text = f"""
[gateway]
state_dir = "{self.directory}/state"
hostname = "{self.name}.test"

[[listener]]
name = "mx"
endpoint = "tcp:{self.smtp_port}:interface=127.0.0.1"
proxy_protocol = true
trusted_networks = ["127.0.0.0/8"]

[status]
endpoint = "tcp:{self.status_port}:interface=127.0.0.1"

[graph]
tenant_id = "{fake.tenant_id}"
client_id = "{fake.client_id}"
client_secret_file = "{rig.secret_path}"
authority = "{fake.authority}"
graph_url = "{fake.graph_url}"
ca_bundle = "{fake.ca_path}"
mailbox_concurrency = {rig.concurrency}
mailbox_rate = {rig.rate}
max_hold = "1s"
tenant_backoff = "{rig.tenant_backoff}s"

[queue]
retry_schedule = ["1s", "2s", "5s"]

[redis]
unix_socket = "{rig.redis_socket}"
connect_timeout = "1s"
reply_timeout = "1s"

[cluster]
name = "test"
node_id = "{self.name}"
expected_nodes = {rig.expected_nodes}
lease_ttl = "{rig.lease_ttl}s"
retry = "0.5s"
rate_window = "{rig.window}s"
"""
        with open(self.config_path, "w") as f:
            f.write(text)

    @inlineCallbacks
    def start(self):
        self.write_config()
        self.daemon = spawn_gateway(self.rig.case, self.config_path)
        yield self.daemon.wait_for(rb"listener mx accepting SMTP")
        yield self.daemon.wait_for(rb"cluster test: node " + self.name.encode())

    @inlineCallbacks
    def kill(self):
        """SIGKILL: no shutdown, no lease released; the spool stays as it was."""
        self.daemon.signal(signal.SIGKILL)
        yield self.daemon.ended

    @property
    def log(self) -> str:
        return self.daemon.output.decode("utf-8", "replace") if self.daemon else ""


class ClusterRig:
    """
    ``ClusterRig(case, nodes=3, ...)``; ``yield rig.start()``; everything started is stopped in
    ``case``'s cleanup.  ``rate`` messages per ``window`` seconds and ``concurrency`` requests
    in flight are the per-mailbox limits; the fake answers each sendMail after ``latency`` s.
    """

    def __init__(self, case: Any, nodes: int = 3, concurrency: int = 3, rate: int = 30, window: float = 2.0,
                 lease_ttl: float = 3.0, latency: float = 0.05, expected_nodes: Optional[int] = None,
                 tenant_backoff: float = 30.0) -> None:
        self.case = case
        self.count = nodes
        self.concurrency = concurrency
        self.rate = rate
        self.window = window
        self.lease_ttl = lease_ttl
        self.latency = latency
        self.expected_nodes = expected_nodes or nodes
        self.tenant_backoff = tenant_backoff
        self.directory = tempfile.mkdtemp(prefix="gsc", dir="/tmp")
        self.nodes: list[Node] = []
        #: Every port of the rig, picked before any is bound, so none twice.
        self.ports = ports_for(case)
        self.front_port = self.ports.port()
        self.redis: Any = None
        self.fake: Any = None
        self.haproxy: Optional[_Output] = None
        self._waiting: list[tuple[set, Deferred]] = []
        self._counting: list[tuple[int, Deferred]] = []
        self.delivered: dict[int, list[str]] = {}

    @property
    def redis_socket(self) -> str:
        return os.path.join(self.directory, "redis.sock")

    @inlineCallbacks
    def start(self):
        import shutil

        self.case.addCleanup(shutil.rmtree, self.directory, True)
        yield self.start_redis()
        self.fake = yield start_fake_graph(reactor, os.path.join(self.directory, "fake"))
        self.case.addCleanup(self.fake.stop)
        self.fake.inject(Fault.slow(self.latency), operation="sendMail", times=None)
        self.fake.on_sent.append(self._sent)
        self.secret_path = write_private(os.path.join(self.directory, "client-secret"), self.fake.client_secret + "\n")
        self.nodes = [Node(self, i + 1) for i in range(self.count)]
        yield gatherResults([node.start() for node in self.nodes])
        yield self.start_haproxy()

    @inlineCallbacks
    def start_redis(self):
        self.redis = yield start_redis_server(reactor, self.directory, 0, ())
        self.case.addCleanup(self.redis.stop)

    def stop_redis(self) -> Deferred:
        return self.redis.stop()

    @inlineCallbacks
    def start_haproxy(self):
        path = os.path.join(self.directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(haproxy_config(self.front_port, self.nodes))
        import shutil

        executable = shutil.which("haproxy")
        if executable is None:
            self.case.fail("haproxy is not installed: install the Debian package haproxy "
                           "(bash scripts/test.sh installs everything in scripts/debian-packages.txt)")
        self.haproxy = _Output()
        process = reactor.spawnProcess(self.haproxy, executable, [executable, "-db", "-f", path], env={},
                                       path=self.directory)

        def stop() -> Deferred:
            if not self.haproxy.ended.called:
                process.signalProcess("TERM")
            return self.haproxy.ended

        self.case.addCleanup(stop)
        for _ in range(200):
            try:
                proto = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.front_port, 2), Protocol())
            except Exception:
                if self.haproxy.ended.called:
                    raise AssertionError("haproxy exited: " + self.haproxy.output.decode("utf-8", "replace")) from None
                yield deferLater(reactor, 0.05, lambda: None)
                continue
            proto.transport.loseConnection()
            return
        raise AssertionError("haproxy did not listen: " + self.haproxy.output.decode("utf-8", "replace"))

    # -- mail ------------------------------------------------------------------------------

    @staticmethod
    def mailboxes(count: int = 3) -> list[str]:
        return [f"sender{i}@example.com" for i in range(1, count + 1)]

    def send(self, first: int, count: int, connections: int = 6, mailboxes: Optional[list] = None) -> Deferred:
        """
        Send messages ``first .. first+count-1`` through HAProxy over ``connections`` parallel
        SMTP sessions (threads running smtplib), spread over ``mailboxes``; fires with the
        list of sequence numbers whose DATA got a 250 and the list of any other replies.
        """
        mailboxes = mailboxes or self.mailboxes()
        numbers = list(range(first, first + count))
        shares = [numbers[i::connections] for i in range(connections)]

        def session(share: list) -> tuple[list, list]:
            accepted, refused = [], []
            with smtplib.SMTP("127.0.0.1", self.front_port, timeout=60) as smtp:
                for n in share:
                    sender = mailboxes[n % len(mailboxes)]
                    message = EmailMessage()
                    message["From"] = sender
                    message["To"] = "someone@example.org"
                    message["Subject"] = f"cluster-message-{n}"
                    message.set_content(f"message {n}\n")
                    try:
                        smtp.send_message(message, sender, ["someone@example.org"])
                        accepted.append(n)
                    except smtplib.SMTPException as e:
                        refused.append((n, repr(e)))
            return accepted, refused

        d = gatherResults([deferToThread(session, share) for share in shares if share])

        def merged(results: list) -> tuple[list, list]:
            accepted, refused = [], []
            for a, r in results:
                accepted += a
                refused += r
            return sorted(accepted), refused

        return d.addCallback(merged)

    def _sent(self, message: Any) -> None:
        mime = message.mime or b""
        found = _SEQ.search(mime)
        if found is None:
            return
        by = _BY.search(mime)
        self.delivered.setdefault(int(found.group(1)), []).append(by.group(1).decode() if by else "?")
        self._check_counts()
        for waiting in list(self._waiting):
            numbers, d = waiting
            if numbers <= set(self.delivered):
                self._waiting.remove(waiting)
                d.callback(None)

    def delivered_count(self, count: int, timeout: float = 120.0) -> Deferred:
        """Fires once ``count`` distinct messages reached the fake."""
        d: Deferred = Deferred()
        self._counting.append((count, d))
        self._check_counts()
        return d.addTimeout(timeout, reactor)

    def _check_counts(self) -> None:
        for waiting in list(self._counting):
            count, d = waiting
            if len(self.delivered) >= count:
                self._counting.remove(waiting)
                d.callback(None)

    def delivered_all(self, numbers: Any, timeout: float = 120.0) -> Deferred:
        """Fires once every one of ``numbers`` reached the fake (fails after ``timeout`` s)."""
        wanted = set(numbers)
        d: Deferred = Deferred()
        if wanted <= set(self.delivered):
            d.callback(None)
            return d
        self._waiting.append((wanted, d))

        def missing(failure: Any) -> Any:
            lost = sorted(wanted - set(self.delivered))
            logs = "\n".join(f"--- {n.name}\n{n.log[-3000:]}" for n in self.nodes)
            raise AssertionError(f"{len(lost)} messages never reached Graph: {lost[:20]}...\n{logs}")

        return d.addTimeout(timeout, reactor).addErrback(missing)

    # -- what the fake saw -------------------------------------------------------------------

    def busiest_window(self, mailbox: str) -> int:
        return self.fake.busiest_window(mailbox, self.window)

    def max_in_flight(self, mailbox: str) -> int:
        return self.fake.max_concurrency.get(mailbox.lower(), 0)


__all__ = ["ClusterRig", "Node", "haproxy_config"]
