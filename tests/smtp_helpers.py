"""
Helpers shared by the SMTP intake tests: factories with in-memory
collaborators, scripted and deferred policies, an in-memory cred realm, a STARTTLS-capable
StringTransport, and a TLS options source from the test CA.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config.model import Limits, ListenerConfig
from gateway.policy.chain import PolicyChain
from gateway.policy.interfaces import (
    Continue,
    IAuthenticatedIdentity,
    Identity,
    IPolicy,
)
from gateway.smtp.factory import GatewaySMTPFactory
from gateway.smtp.state import SessionState
from gateway.testing.memory_spool import MemorySpool

HOSTNAME = "gw.test"
PASSWORD = b"s3cret-pa55"
ENHANCED = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3} ")


class TrackingFactory(GatewaySMTPFactory):
    """Tells tests when every server-side session has seen connectionLost (clean reactor)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._all_closed: list[Deferred] = []
        self.opened = 0

    def session_opened(self, proto: Any) -> None:
        self.opened += 1
        super().session_opened(proto)

    def session_closed(self, proto: Any) -> None:
        super().session_closed(proto)
        if not self.sessions:
            waiters, self._all_closed = self._all_closed, []
            for d in waiters:
                d.callback(None)

    def all_closed(self) -> Deferred:
        d: Deferred = Deferred()
        if not self.sessions:
            d.callback(None)
        else:
            self._all_closed.append(d)
        return d


def make_factory(
    policies: tuple = (), portal: Any = None, tls_source: Any = None, spool: Any = None, clock: Any = None,
    add_message_id: bool = True, add_date: bool = True, limits: Optional[dict] = None, **listener: Any,
) -> GatewaySMTPFactory:
    config = ListenerConfig(name=listener.pop("name", "test"), endpoint=listener.pop("endpoint", "tcp:0"),
                            limits=Limits(**(limits or {})), **listener)
    return TrackingFactory(
        config, HOSTNAME, spool if spool is not None else MemorySpool(), PolicyChain(list(policies)),
        clock if clock is not None else Clock(), portal=portal, tls=tls_source,
        add_message_id=add_message_id, add_date=add_date,
    )


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that can 'start TLS' (records the options it was given)."""

    tls_options: Any = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_options = contextFactory


class Session:
    """A protocol connected to a StringTransport; ``send`` returns the reply lines it produced."""

    def __init__(self, factory: GatewaySMTPFactory, peer: str = "192.0.2.10", port: int = 40000, transport: Any = None) -> None:
        self.factory = factory
        self.transport = transport if transport is not None else StringTransport(peerAddress=IPv4Address("TCP", peer, port))
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._seen = 0
        self.banner = self.lines()

    def lines(self) -> list[bytes]:
        value = self.transport.value()
        new, self._seen = value[self._seen:], len(value)
        return new.split(b"\r\n")[:-1]

    def send(self, data: bytes) -> list[bytes]:
        self.proto.dataReceived(data)
        return self.lines()

    def cmd(self, line: str) -> bytes:
        """One command, one reply line (the last line of a multi-line reply)."""
        lines = self.send(line.encode("ascii") + b"\r\n")
        return lines[-1] if lines else b""

    def ehlo(self, name: str = "client.test") -> list[bytes]:
        return self.send(f"EHLO {name}\r\n".encode("ascii"))

    def envelope(self, sender: str = "a@sender.test", *recipients: str) -> None:
        assert self.cmd(f"MAIL FROM:<{sender}>").startswith(b"250 "), "MAIL refused"
        for r in recipients or ("r@rcpt.test",):
            assert self.cmd(f"RCPT TO:<{r}>").startswith(b"250 "), "RCPT refused"

    def close(self) -> None:
        if self.proto.state is not SessionState.GONE:
            self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


@implementer(IPolicy)
class ScriptedPolicy:
    """Answers each step from ``verdicts`` (a verdict or a callable(session, arg)); records calls."""

    def __init__(self, **verdicts: Any) -> None:
        self.verdicts = verdicts
        self.calls: list[tuple[str, Any, Any]] = []

    def _answer(self, step: str, session: Any, arg: Any) -> Any:
        self.calls.append((step, session, arg))
        verdict = self.verdicts.get(step, Continue())
        return verdict(session, arg) if callable(verdict) else verdict

    def on_connect(self, session):
        return self._answer("on_connect", session, None)

    def on_mail_from(self, session, sender):
        return self._answer("on_mail_from", session, sender)

    def on_rcpt_to(self, session, recipient):
        return self._answer("on_rcpt_to", session, recipient)

    def on_message(self, session, message):
        return self._answer("on_message", session, message)


@implementer(IPolicy)
class DeferredPolicy(ScriptedPolicy):
    """Every step returns an unfired Deferred (appended to ``pending``) that the test fires."""

    def __init__(self, steps: tuple = ("on_connect", "on_mail_from", "on_rcpt_to", "on_message")) -> None:
        super().__init__()
        self.steps = steps
        self.pending: list[Deferred] = []

    def _answer(self, step, session, arg):
        self.calls.append((step, session, arg))
        if step not in self.steps:
            return Continue()
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def fire_all(self, verdict: Any = None) -> None:
        while self.pending:
            self.pending.pop(0).callback(verdict or Continue())


@implementer(IRealm)
class IdentityRealm:
    """Maps a checked login to an L{Identity}; counts logouts."""

    def __init__(self, credential_ref: Optional[str] = None) -> None:
        self.logouts = 0
        self.credential_ref = credential_ref

    def requestAvatar(self, avatarId, mind, *interfaces):
        assert IAuthenticatedIdentity in interfaces

        def logout() -> None:
            self.logouts += 1

        login = avatarId.decode() if isinstance(avatarId, bytes) else avatarId
        return IAuthenticatedIdentity, Identity(login=login, credential_ref=self.credential_ref), logout


def make_portal(realm: Optional[IdentityRealm] = None) -> tuple[Portal, IdentityRealm]:
    realm = realm or IdentityRealm()
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice", PASSWORD)
    return Portal(realm, [checker]), realm


class StaticTLS:
    """The ``server_options()`` source the factory expects, over fixed options."""

    def __init__(self, options: Any) -> None:
        self.options = options
        self.asked = 0

    def server_options(self) -> Any:
        self.asked += 1
        return self.options


def tls_from_ca(ca: Any) -> StaticTLS:
    issued = ca.issue(["localhost", "127.0.0.1"])
    with open(issued.cert_path, "rb") as c, open(issued.key_path, "rb") as k:
        pem = c.read() + k.read()
    return StaticTLS(ssl.PrivateCertificate.loadPEM(pem).options())
