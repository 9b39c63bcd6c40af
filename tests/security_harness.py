"""
A real SMTP listener on 127.0.0.1 for the security integration tests: H1's factory and listener
service with this package's TLS source, portal and relay policy, spooling into a MemorySpool.

Also: a log capture that proves secrets never reach the logs, a blocking raw-socket client for
the attacks that real clients will not perform (pipelined STARTTLS injection, PROXY headers),
and a waiter for the server side of every session to be closed (so no DelayedCall or socket is
left behind for trial's janitor).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from typing import Any, Iterable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.python.threadpool import ThreadPool

from gateway.auth.build import build_auth
from gateway.auth.throttle import ThrottleSettings
from gateway.config.auth import AuthConfig, PassThroughConfig
from gateway.config.model import ListenerConfig
from gateway.policy.chain import PolicyChain
from gateway.smtp.factory import GatewaySMTPFactory
from gateway.smtp.listener import listener_service
from gateway.smtp.tls import TLSContextSource
from gateway.testing.certs import TestCA
from gateway.testing.memory_spool import MemorySpool
from tests.auth_helpers import FakeTokenAcquirer, make_users_file

HOST = "127.0.0.1"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0b5e4f0a-9d8e-4c0b-8a39-6f7a2d9e1c11"
APP_SECRET = "Q~pass.through.secret-ABCDEFGHIJ0123456789"
ALICE_PASSWORD = "alice's long password 7Qx!"
TIMEOUT = 10


class SecureServer:
    """One running listener; build with L{SecureServer.start}."""

    def __init__(self) -> None:
        self.port = 0
        self.factory: Any = None
        self.spool = MemorySpool()
        self.tls: Optional[TLSContextSource] = None
        self.auth: Any = None
        self.ca: Optional[TestCA] = None
        self.cert: Any = None
        self.entra: Optional[FakeTokenAcquirer] = None
        self._closed_waiters: list[Deferred] = []

    @classmethod
    @inlineCallbacks
    def start(
        cls,
        case: Any,
        name: str = "submission",
        endpoint: str = f"tcp:0:interface={HOST}",
        tls: str = "starttls",
        throttle: ThrottleSettings = ThrottleSettings(base_delay=0, max_delay=0),
        passthrough: bool = False,
        token_acquirer: Any = None,
        ca: Optional[TestCA] = None,
        **listener_options: Any,
    ):
        self = cls()
        directory = os.path.abspath(case.mktemp())
        os.makedirs(directory)
        self.ca = ca or TestCA.create(os.path.join(directory, "ca"))
        issued = self.ca.issue()
        # live copies, so a test can replace them like a renewal would
        self.cert_path = os.path.join(directory, "live.pem")
        self.key_path = os.path.join(directory, "live.key")
        self.install_certificate(issued)
        self.cert = issued
        users = make_users_file(os.path.join(directory, "users.jsonl"), {
            "alice": (ALICE_PASSWORD, ["alice@corp.example"]),
            "anyone": (ALICE_PASSWORD, ["*"]),
        })
        options = dict(
            name=name, endpoint=endpoint, tls=tls, auth="optional",
            tls_cert=self.cert_path if tls != "none" else None, tls_key=self.key_path if tls != "none" else None,
        )
        options.update(listener_options)
        self.listener = ListenerConfig(**options)
        if self.listener.tls != "none":
            self.tls = TLSContextSource(self.listener)

        pool = ThreadPool(1, 2, "test-auth")
        pool.start()
        case.addCleanup(pool.stop)
        self.entra = FakeTokenAcquirer({(TENANT, CLIENT): APP_SECRET})
        config = AuthConfig(
            users_file=users,
            passthrough=PassThroughConfig(enabled=passthrough, allowed_tenants=(TENANT,)),
            throttle=throttle,
        )
        self.auth = build_auth(config, directory, reactor=reactor, threadpool=pool, token_acquirer=token_acquirer or self.entra)
        # the shape the wiring builds: relay access as the chain's guard, no other policies
        chain = PolicyChain((), guard=self.auth.relay_policy(self.listener))
        self.factory = GatewaySMTPFactory(
            self.listener, "mx.test", self.spool, chain, reactor,
            portal=self.auth.portal_for(self.listener), tls=self.tls,
        )
        original = self.factory.session_closed

        def session_closed(proto: Any) -> None:
            original(proto)
            if not self.factory.sessions:
                waiters, self._closed_waiters = self._closed_waiters, []
                for d in waiters:
                    d.callback(None)

        self.factory.session_closed = session_closed
        service = listener_service(reactor, self.listener, self.factory)
        service.startService()
        case.addCleanup(self._stop, service)
        port = yield service.when_listening()
        self.port = port.getHost().port
        return self

    @inlineCallbacks
    def _stop(self, service: Any):
        self.factory.close_sessions()
        yield self.sessions_closed()
        yield service.stopService()

    def install_certificate(self, issued: Any) -> None:
        for src, dst in ((issued.cert_path, self.cert_path), (issued.key_path, self.key_path)):
            shutil.copy(src, dst + ".new")
            os.chmod(dst + ".new", 0o600)
            os.rename(dst + ".new", dst)

    def sessions_closed(self) -> Deferred:
        """Fires once the server side of every session has gone (connectionLost ran)."""
        if not self.factory.sessions:
            return succeed(None)
        d: Deferred = Deferred()
        self._closed_waiters.append(d)
        return d

    def client_context(self, **kwargs: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca.ca_cert_path)
        for k, v in kwargs.items():
            setattr(ctx, k, v)
        return ctx


class RawClient:
    """A blocking line client (run it in a thread) that can misbehave on purpose."""

    def __init__(self, port: int, preamble: bytes = b"") -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        if preamble:
            self.sock.sendall(preamble)
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: (code, lines); (0, []) when the server closed."""
        lines = []
        while True:
            try:
                line = self.file.readline()
            except (ConnectionResetError, ssl.SSLError):
                return 0, lines
            if not line:
                return 0, lines
            text = line.decode("ascii", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> tuple[int, list[str]]:
        self.send(line.encode("ascii") + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.file = self.sock.makefile("rb")

    def closed(self) -> bool:
        """Whether the server has closed the connection (EOF or reset)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def ehlo_keywords(lines: Iterable[str]) -> set[str]:
    return {line[4:].split(" ", 1)[0].upper() for line in list(lines)[1:]}
