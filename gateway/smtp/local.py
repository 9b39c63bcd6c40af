"""
Local submission: SMTP over the daemon's UNIX socket, for ``graphsmtp-sendmail`` run by any
local user (``[local]``, L{gateway.config.local}).

The same protocol, intake and policy code as a network listener runs; what differs is who the
client is.  There is no AUTH: the kernel reports the connecting process's uid
(``SO_PEERCRED``), which no client can forge, and the session starts logged in as
``unix:<user name>`` with that user's allowed senders — so the relay guard bounds the envelope
sender and the From/Sender headers exactly as it does for an SMTP login, and the ``[local]``
policy chain sees the identity like any listener's chain does.
"""

from __future__ import annotations

import email.parser
import email.policy
import pwd
import socket
import struct
from typing import Any, Optional

import attrs
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from gateway.auth.patterns import PatternError, validate_pattern
from gateway.config.errors import ConfigError
from gateway.config.local import LOGIN_PREFIX, LocalConfig
from gateway.policy.interfaces import Identity, MessageView, SessionView, TempFail
from gateway.smtp.factory import GatewaySMTPFactory
from gateway.smtp.protocol import GatewayESMTP
from gateway.smtp.replies import verdict_refusal
from gateway.smtp.state import SessionState

# What the Received header and the provenance record as the client's address: the user's
# name stays out of the message (as an SMTP login does), the identity is in the spool record.
LOCAL_ADDRESS = "127.0.0.1"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(transport: Any) -> Optional[int]:
    """The uid of the process at the other end of a UNIX socket connection, or None."""
    try:
        sock = transport.getHandle()
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (AttributeError, OSError):
        return None
    _, uid, _ = _UCRED.unpack(raw)
    return uid


def user_name(uid: int) -> str:
    """The account name of ``uid`` (its number when it has no passwd entry)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class LocalSubmissionESMTP(GatewayESMTP):
    """
    A session whose identity comes from the socket's peer credentials, not from AUTH.  It stays
    in L{SessionState.NEW} while its user's name is looked up: lost then, no session was opened.
    """

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport)
        if uid is None:
            self.log.error("local submission socket: cannot read the peer's credentials; refused")
            self.factory.session_opened(self)
            self.reply_and_close(421, "4.7.0", f"{self.hostname} cannot identify the local user")
            return
        # The passwd lookup may ask NSS (LDAP, sssd): not on the reactor thread.  The client
        # waits for the banner, which comes once the user is known.
        self.transport.pauseProducing()
        d = deferToThread(user_name, uid)
        d.addErrback(lambda _: str(uid))
        d.addCallback(self._identified)

    def _identified(self, name: str) -> None:
        if self.state is SessionState.GONE:
            return
        self.identity = Identity(login=LOGIN_PREFIX + name, allowed_senders=self.factory.senders_for(name))
        self.authenticated = True
        self.transport.resumeProducing()
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        if self.state is SessionState.NEW:
            self._enter(SessionState.GONE)  # gone before the banner: no session was opened
            return
        super().connectionLost(reason)

    def _logout_identity(self) -> None:
        # Nothing to log out of, and the identity must survive anything that would reset an
        # AUTH login (there is no STARTTLS here, but keep it the kernel's word regardless).
        identity = self.identity
        super()._logout_identity()
        if self.state is not SessionState.GONE:
            self.identity, self.authenticated = identity, identity is not None

    def client_address(self) -> str:
        return LOCAL_ADDRESS

    def session_view(self) -> SessionView:
        return attrs.evolve(super().session_view(), client_address=LOCAL_ADDRESS, client_port=0,
                            trusted_network=False)


def check_allowed_senders(local: LocalConfig) -> None:
    """Refuse a ``[local.allowed_senders]`` pattern that is not valid (at start-up and on SIGHUP)."""
    for user, patterns in local.allowed_senders:
        for pattern in patterns:
            try:
                validate_pattern(pattern)
            except PatternError as e:
                raise ConfigError(f"local.allowed_senders.{user}", str(e)) from None


class LocalSubmissionFactory(GatewaySMTPFactory):
    """The protocol factory of the local socket; ``local`` gives the per-user allowed senders."""

    protocol = LocalSubmissionESMTP

    def __init__(self, local: LocalConfig, hostname: str, spool: Any, chain: Any, clock: Any,
                 add_message_id: bool = True, add_date: bool = True, listener: Any = None,
                 intake: Any = None, send_as: str = "header-from", judge_pool: Any = None) -> None:
        super().__init__(listener or local.listener(), hostname, spool, chain, clock, portal=None, tls=None,
                         add_message_id=add_message_id, add_date=add_date, intake=intake,
                         send_as=send_as, judge_pool=judge_pool)
        self.local = local
        check_allowed_senders(local)

    def senders_for(self, user: str) -> tuple[str, ...]:
        return self.local.senders_for(user)

    def is_trusted(self, address: str) -> bool:
        return False  # a local user is who the kernel says, never "a trusted network"


_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.SMTP)
_HEADER_LIMIT = 1024 * 1024


def _read_header_section(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    end = head.find(b"\r\n\r\n")
    return head if end < 0 else head[: end + 4]


class DropOffJudge:
    """
    Judges a message the gateway's own user dropped into incoming/ while the daemon was down
    with the same ``[local]`` chain (relay guard included) a socket submission meets, when the
    daemon imports it.  The command exited 0 long ago, so a refusal cannot be answered: the
    entry goes to failed/ with the reason instead of being delivered.  Header edits of the
    chain are not applied to drop-offs, and a temporary refusal lets the message through (it
    was accepted already; delaying it again would not make it more acceptable).
    """

    log = Logger()

    def __init__(self, chain: Any, local: LocalConfig) -> None:
        self.chain = chain
        self.local = local

    @inlineCallbacks
    def __call__(self, entry: Any) -> Any:
        """Fires with None (deliver) or the refusal as one line ("550 5.7.1 …")."""
        user = entry.provenance.auth_identity or "unknown"
        session = SessionView(
            listener=self.local.listener().name, client_address=LOCAL_ADDRESS, client_port=0,
            client_name="localhost", identity=Identity(login=LOGIN_PREFIX + user, allowed_senders=self.local.senders_for(user)),
        )
        result = yield maybeDeferred(self.chain.on_connect, session)
        refusal = self._refusal(result, entry)
        if refusal is None:
            result = yield maybeDeferred(self.chain.on_mail_from, session, entry.envelope.sender)
            refusal = self._refusal(result, entry)
        session = attrs.evolve(session, sender=entry.envelope.sender)
        for recipient in entry.envelope.recipients:
            if refusal is not None:
                break
            result = yield maybeDeferred(self.chain.on_rcpt_to, session, recipient)
            refusal = self._refusal(result, entry)
        if refusal is None:
            session = attrs.evolve(session, recipients=tuple(entry.envelope.recipients))
            header_section = yield deferToThread(_read_header_section, entry.message_path)
            view = MessageView(headers=_HEADER_PARSER.parsebytes(header_section), header_bytes=header_section,
                               size=entry.size, open_body=_opener(entry.message_path, len(header_section)))
            result = yield maybeDeferred(self.chain.on_message, session, view)
            refusal = self._refusal(result, entry)
        return refusal

    def _refusal(self, result: Any, entry: Any) -> Optional[str]:
        refusal = verdict_refusal(result)
        if refusal is None:
            return None
        if isinstance(getattr(result, "verdict", result), TempFail):
            self.log.warn("sendmail drop-off {queue_id}: the [local] chain answered {code} {status} {text}; "
                          "delivering it anyway (it was accepted while the daemon was down)",
                          queue_id=entry.queue_id, code=refusal.code, status=refusal.status, text=refusal.text)
            return None
        return f"{refusal.code} {refusal.status} {refusal.text}"


def _opener(path: str, offset: int) -> Any:
    def open_body() -> Any:
        f = open(path, "rb")
        f.seek(offset)
        return f
    return open_body


__all__ = ["LocalSubmissionESMTP", "LocalSubmissionFactory", "DropOffJudge", "peer_uid", "user_name", "LOCAL_ADDRESS"]
