"""
Helpers for testing policies without an SMTP session: build the views a policy is given, run
a policy or a chain through a whole transaction, and start a throw-away ``redis-server``.

Public for plugin authors: a custom policy's trial tests can be a few lines::

    from gateway.testing.policy import make_message, make_session, run_transaction
    result = self.successResultOf(run_transaction(PolicyChain([MyPolicy()]), make_session(),
                                                  "a@corp.example", ["b@corp.example"], raw))
    self.assertEqual(result.step, "message")
"""

from __future__ import annotations

import email.policy
import io
import os
import shutil
from email.parser import BytesHeaderParser
from typing import Any, Iterable, Optional

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol

from gateway.policy.chain import PolicyChain
from gateway.policy.interfaces import Identity, MessageView, SessionView


def make_session(
    client_address: str = "192.0.2.10",
    login: Optional[str] = None,
    listener: str = "submission",
    **kwargs: Any,
) -> SessionView:
    """A L{SessionView}; ``login`` makes it authenticated as that login."""
    identity = kwargs.pop("identity", None)
    if identity is None and login is not None:
        identity = Identity(login=login)
    return SessionView(
        listener=listener, client_address=client_address,
        client_port=kwargs.pop("client_port", 40000), identity=identity, **kwargs,
    )


def make_message(raw: bytes) -> MessageView:
    """A L{MessageView} of ``raw`` (an RFC 5322 message, CRLF or LF line ends) parsed as the SMTP layer does."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    end = raw.find(b"\r\n\r\n")
    header_bytes, body = (raw[: end + 4], raw[end + 4:]) if end >= 0 else (raw, b"")
    headers = BytesHeaderParser(policy=email.policy.SMTP).parsebytes(header_bytes)
    return MessageView(headers=headers, header_bytes=header_bytes, size=len(raw), open_body=lambda: io.BytesIO(body))


@attrs.frozen
class TransactionResult:
    """Where a transaction ended (``step``: connect, mail, rcpt, message) and the chain's last result."""

    step: str
    result: Any
    accepted_recipients: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.result.allowed


@inlineCallbacks
def run_transaction(
    chain: Any,
    session: SessionView,
    sender: str,
    recipients: Iterable[str],
    raw: Optional[bytes] = None,
):
    """
    Drive ``chain`` through connect → MAIL → RCPT (each) → message, as the SMTP layer does.
    Refused recipients are dropped (like a 5xx/4xx to RCPT); with none left the transaction
    ends at ``rcpt``.  Fires with a L{TransactionResult}.  ``chain`` may also be one policy or
    a list of policies (run as a chain in that order), so a plugin's test needs no chain import.
    """
    if not isinstance(chain, PolicyChain):
        chain = PolicyChain(tuple(chain) if isinstance(chain, (list, tuple)) else (chain,))
    result = yield chain.on_connect(session)
    if not result.allowed:
        return TransactionResult("connect", result)
    result = yield chain.on_mail_from(session, sender)
    if not result.allowed:
        return TransactionResult("mail", result)
    session = attrs.evolve(session, sender=sender)
    accepted: list[str] = []
    last = result
    for recipient in recipients:
        last = yield chain.on_rcpt_to(session, recipient)
        if last.allowed:
            accepted.append(recipient)
            session = attrs.evolve(session, recipients=tuple(accepted))
    if not accepted:
        return TransactionResult("rcpt", last)
    if raw is None:
        return TransactionResult("rcpt", last, tuple(accepted))
    result = yield chain.on_message(session, make_message(raw))
    return TransactionResult("message", result, tuple(accepted))


class _RedisProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        # "Ready to accept connections tcp" or "...ready to accept connections at <socket>".
        if not self.ready.called and b"ready to accept connections" in self.output.lower():
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        # Ended first: whoever the failed start makes stop the server must see it gone.
        self.ended.callback(None)
        if not self.ready.called:
            self.ready.errback(RuntimeError("redis-server exited: " + self.output.decode("utf-8", "replace")[-500:]))


@attrs.define
class RedisServer:
    """A running ``redis-server`` on a unix socket; ``stop()`` fires when it has exited."""

    socket_path: str
    process: Any
    protocol: _RedisProcess

    def stop(self) -> Deferred:
        if not self.protocol.ended.called:
            self.process.signalProcess("TERM")
        return self.protocol.ended


def redis_server_path() -> Optional[str]:
    return shutil.which("redis-server")


@inlineCallbacks
def start_redis_server(reactor: Any, directory: str, port: int = 0, extra_args: Iterable[str] = ()):
    """
    Start ``redis-server`` with no persistence, listening on ``directory/redis.sock`` (and on
    127.0.0.1:``port`` when ``port`` is not 0); fires with a L{RedisServer} once it accepts
    connections.  ``directory`` should be short: unix socket paths are limited to ~100 bytes.
    """
    executable = redis_server_path()
    if executable is None:
        raise RuntimeError("redis-server is not installed")
    socket_path = os.path.join(directory, "redis.sock")
    args = [
        executable, "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", socket_path,
        "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", directory,
        "--logfile", "", "--daemonize", "no", *extra_args,
    ]
    protocol = _RedisProcess()
    process = reactor.spawnProcess(protocol, executable, args, env={}, path=directory)
    server = RedisServer(socket_path, process, protocol)
    try:
        yield protocol.ready.addTimeout(30, reactor)
    except Exception:
        yield server.stop()
        raise
    return server


__all__ = [
    "make_session", "make_message", "run_transaction", "TransactionResult",
    "RedisServer", "start_redis_server", "redis_server_path",
]
