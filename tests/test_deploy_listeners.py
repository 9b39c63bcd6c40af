"""
A listener that cannot bind stops start-up (exit status not 0, one line naming the listener and
its endpoint) instead of "Unhandled Error" and a daemon without its port; a listener lost after
start-up makes /healthz answer 503.
"""

from __future__ import annotations

import json
import os
import sys

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.service import GatewayOptions, makeService
from gateway.status.web import snapshot
from gateway.testing.harness import gateway_config, start_gateway
from gateway.testing.logs import LogCapture
from tests.daemon_helpers import ROOT, GatewayDaemon, spawn_gateway


class BindFailureTests(TestCase):
    timeout = 60

    def occupied_port(self) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def write_config(self, listeners: str, extra: str = "") -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "graphsmtp.toml")
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = "{directory}/state"\nhostname = "bind.test"\n{extra}{listeners}')
        return path

    @inlineCallbacks
    def test_port_in_use_stops_start_up_with_one_line(self):
        busy = self.occupied_port()
        endpoint = f"tcp:{busy}:interface=127.0.0.1"
        config = self.write_config(
            '[[listener]]\nname = "free"\nendpoint = "tcp:0:interface=127.0.0.1"\n'
            f'[[listener]]\nname = "mx"\nendpoint = "{endpoint}"\ntrusted_networks = ["127.0.0.0/8"]\n')
        daemon = spawn_gateway(self, config)
        code = yield daemon.ended
        self.assertNotEqual(code, 0)
        text = daemon.output.decode("utf-8", "replace")
        self.assertNotIn("Unhandled Error", text)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("accepting SMTP", text.split("cannot listen")[-1])  # nothing announced after it
        # twistd routes stderr into its log, so the line is looked for in the whole output.
        [line] = [line for line in text.splitlines() if "cannot listen" in line]
        self.assertIn(f"listener mx ({endpoint}) cannot listen", line)
        self.assertIn("Address already in use", line)

    @inlineCallbacks
    def test_status_port_in_use_stops_start_up(self):
        busy = self.occupied_port()
        config = self.write_config('[[listener]]\nname = "free"\nendpoint = "tcp:0:interface=127.0.0.1"\n',
                                   f'[status]\nendpoint = "tcp:{busy}:interface=127.0.0.1"\n')
        daemon = spawn_gateway(self, config)
        code = yield daemon.ended
        self.assertNotEqual(code, 0)
        self.assertIn(f"status endpoint (tcp:{busy}:interface=127.0.0.1) cannot listen", daemon.output.decode())
        self.assertNotIn(b"Traceback", daemon.output)

    def spawn(self, bootstrap: str, *args: str) -> GatewayDaemon:
        """Run ``bootstrap`` (a ``python -c`` program) with ``args``; reaped in the cleanup."""
        daemon = GatewayDaemon()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        reactor.spawnProcess(daemon, sys.executable, [sys.executable, "-c", bootstrap, *args], env=env, path=ROOT)
        self.addCleanup(daemon.stop)
        return daemon

    @inlineCallbacks
    def test_daemonising_twistd_exits_instead_of_hanging(self):
        # Without -n twistd forks and the parent waits for the child's word on a pipe; a bare
        # SystemExit in the child never says a word, so the parent (what an init script or an
        # admin's shell waits on) hung for ever.  Hanging fails this test by its timeout.
        busy = self.occupied_port()
        config = self.write_config(f'[[listener]]\nname = "mx"\nendpoint = "tcp:{busy}:interface=127.0.0.1"\n')
        directory = os.path.dirname(config)
        daemon = self.spawn("from twisted.scripts.twistd import run; run()",
                            f"--pidfile={directory}/twistd.pid", f"--logfile={directory}/twistd.log",
                            "graphsmtp", "--config", config)
        code = yield daemon.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"cannot li", daemon.output)  # the status pipe carries the first 100 bytes
        # The parent exits on the child's word; the detached child writes its log line and
        # removes its pid file on its own time, so wait for that (bounded), not for luck.
        line = f"listener mx (tcp:{busy}:interface=127.0.0.1) cannot listen"
        log_path, pid_path = f"{directory}/twistd.log", f"{directory}/twistd.pid"

        def child_done() -> bool:
            if os.path.exists(pid_path) or not os.path.exists(log_path):
                return False
            with open(log_path) as f:
                return line in f.read()

        for _ in range(200):  # at most 10 s
            if child_done():
                break
            yield deferLater(reactor, 0.05, lambda: None)
        with open(log_path) as f:
            self.assertIn(line, f.read())
        self.assertFalse(os.path.exists(pid_path))

    @inlineCallbacks
    def test_twist_stops_start_up_with_one_line(self):
        # twist never calls privilegedStartService: the port was bound in startService, its
        # failure logged as "Unhandled Error" and the gateway ran on without it.
        busy = self.occupied_port()
        config = self.write_config(f'[[listener]]\nname = "mx"\nendpoint = "tcp:{busy}:interface=127.0.0.1"\n')
        daemon = self.spawn("from twisted.application.twist._twist import Twist; Twist.main()",
                            "--log-format=text", "graphsmtp", "--config", config)
        code = yield daemon.ended
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"Traceback", daemon.output)
        self.assertNotIn(b"Unhandled Error", daemon.output)
        self.assertIn(f"graphsmtp: listener mx (tcp:{busy}:interface=127.0.0.1) cannot listen".encode(),
                      daemon.errors)


class LostListenerHealthTests(TestCase):
    @inlineCallbacks
    def test_healthz_is_503_when_a_listener_is_lost(self):
        gw = yield start_gateway(self, {
            "status": {"endpoint": "tcp:0:interface=127.0.0.1"},
            "listener": [{"name": "mx", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.1/32"]},
                         {"name": "sub", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.1/32"]}],
        })
        status_port = yield gw.status_port()
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

        @inlineCallbacks
        def health():
            response = yield http.get(f"http://127.0.0.1:{status_port}/healthz", timeout=10)
            return response.code, json.loads((yield response.content()))

        code, state = yield health()
        self.assertEqual((code, state["status"]), (200, "ok"))
        [mx] = [part for part in gw.components.listeners if part.config.name == "mx"]
        yield mx.service.port.stopListening()  # the port is gone while the gateway runs on
        code, state = yield health()
        self.assertEqual(code, 503)
        listening = {entry["name"]: entry["listening"] for entry in state["listeners"]}
        self.assertEqual(listening, {"mx": False, "sub": True})


class _LateFailingEndpoint:
    """An endpoint whose listen() fails only after start-up has returned."""

    def __init__(self) -> None:
        self.listening: Deferred = Deferred()

    def listen(self, factory):
        return self.listening


class AsynchronousListenFailureTests(TestCase):
    @inlineCallbacks
    def test_late_failure_is_logged_and_makes_health_degraded(self):
        log = LogCapture.install(self)
        config = gateway_config(self)
        service = makeService(GatewayOptions(config, install_signal_handlers=False), reactor)
        components = service.components
        endpoint = _LateFailingEndpoint()
        components.listeners[0].service.endpoint = endpoint
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        yield components.runner.ready
        endpoint.listening.errback(CannotListenError("127.0.0.1", 25, OSError("Address already in use")))
        # Twisted itself logs a late failure (with its traceback); the gateway adds what it means.
        self.flushLoggedErrors(CannotListenError)
        self.assertEqual([line for line in log.messages() if "is not listening" in line],
                         ["listener default (tcp:0:interface=127.0.0.1) is not listening; restart graphsmtp"])
        state = snapshot(components, reactor)
        self.assertEqual(state["status"], "degraded")
        self.assertFalse(state["listeners"][0]["listening"])
