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

import pwd
import socket
import struct
from typing import Any, Optional

import attrs

from gateway.auth.patterns import PatternError, validate_pattern
from gateway.config.errors import ConfigError
from gateway.config.local import LOGIN_PREFIX, LocalConfig
from gateway.policy.interfaces import Identity, SessionView
from gateway.smtp.factory import GatewaySMTPFactory
from gateway.smtp.protocol import GatewayESMTP

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
    """A session whose identity comes from the socket's peer credentials, not from AUTH."""

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport)
        if uid is None:
            self.log.error("local submission socket: cannot read the peer's credentials; refused")
            self.factory.session_opened(self)
            self._close(421, "4.7.0", f"{self._hostname} cannot identify the local user")
            return
        name = user_name(uid)
        self._identity = Identity(login=LOGIN_PREFIX + name, allowed_senders=self.factory.senders_for(name))
        self.authenticated = True
        super().connectionMade()

    def _logout_identity(self) -> None:
        # Nothing to log out of, and the identity must survive anything that would reset an
        # AUTH login (there is no STARTTLS here, but keep it the kernel's word regardless).
        identity = self._identity
        super()._logout_identity()
        if not self._gone:
            self._identity, self.authenticated = identity, identity is not None

    def _client_address(self) -> str:
        return LOCAL_ADDRESS

    def session_view(self) -> SessionView:
        return attrs.evolve(super().session_view(), client_address=LOCAL_ADDRESS, client_port=0,
                            trusted_network=False)


class LocalSubmissionFactory(GatewaySMTPFactory):
    """The protocol factory of the local socket; ``local`` gives the per-user allowed senders."""

    protocol = LocalSubmissionESMTP

    def __init__(self, local: LocalConfig, hostname: str, spool: Any, chain: Any, clock: Any,
                 add_message_id: bool = True, add_date: bool = True, listener: Any = None) -> None:
        super().__init__(listener or local.listener(), hostname, spool, chain, clock, portal=None, tls=None,
                         add_message_id=add_message_id, add_date=add_date)
        self.local = local
        for user, patterns in local.allowed_senders:
            for pattern in patterns:
                try:
                    validate_pattern(pattern)
                except PatternError as e:
                    raise ConfigError(f"local.allowed_senders.{user}", str(e)) from None

    def senders_for(self, user: str) -> tuple[str, ...]:
        return self.local.senders_for(user)

    def is_trusted(self, address: str) -> bool:
        return False  # a local user is who the kernel says, never "a trusted network"


__all__ = ["LocalSubmissionESMTP", "LocalSubmissionFactory", "peer_uid", "user_name", "LOCAL_ADDRESS"]
