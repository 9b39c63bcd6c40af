"""
The ``[local]`` section: submission by local users through a UNIX socket.

``graphsmtp-sendmail`` run by any user speaks SMTP to the daemon over this socket; the daemon
learns who the user is from the kernel (``SO_PEERCRED``), so nobody can claim another user's
identity, and the ``[local]`` policy chain plus the per-user allowed senders apply exactly as
on an SMTP listener (the session is logged in as ``unix:<user name>``).

    [local]
    socket = "/run/graphsmtp/submit.sock"   # "" turns local submission off
    mode = "0666"                           # anyone may connect; the chain decides
    policies = [ { use = "header-rewrite", ... } ]
    [local.allowed_senders]
    alice = ["alice@corp.example"]
    www-data = ["web@corp.example", "*@shop.corp.example"]
    "*" = ["*@corp.example"]                # everyone not listed; omit to leave them unrestricted
    [local.limits]                          # as [limits]; defaults to [limits]

Without a ``[local]`` table there is no socket, and sendmail drops mail into the spool as the
gateway's own user only.
"""

from __future__ import annotations

from typing import Optional

import attrs

from gateway.config.errors import ConfigError
from gateway.config.model import Limits, ListenerConfig, PolicyRef
from gateway.config.reader import TableReader, check_endpoint

DEFAULT_SOCKET = "/run/graphsmtp/submit.sock"
DEFAULT_MODE = 0o666
# The name the socket has wherever listeners are named (provenance, logs, status): the same
# as sendmail's drop-offs, so "listener sendmail" means "came through graphsmtp-sendmail".
LISTENER_NAME = "sendmail"
LOGIN_PREFIX = "unix:"
EVERYONE = "*"


@attrs.frozen
class LocalConfig:
    """``socket`` None: no local submission socket."""

    socket: Optional[str] = None
    mode: int = DEFAULT_MODE
    policies: tuple[PolicyRef, ...] = ()
    allowed_senders: tuple[tuple[str, tuple[str, ...]], ...] = ()
    limits: Limits = attrs.field(factory=Limits)

    def senders_for(self, user: str) -> tuple[str, ...]:
        """The patterns bounding what ``user`` may send as (empty: no restriction from here)."""
        table = dict(self.allowed_senders)
        return table.get(user, table.get(EVERYONE, ()))

    def listener(self) -> ListenerConfig:
        """The socket as an SMTP listener: no TLS, no AUTH (the kernel says who connects)."""
        path = (self.socket or "").replace("\\", "\\\\").replace(":", "\\:")
        return ListenerConfig(
            name=LISTENER_NAME,
            endpoint=f"unix:{path}:mode={self.mode:o}",
            limits=self.limits,
            policies=self.policies,
        )


def parse_local(root: TableReader, default_limits: Limits, resolve) -> LocalConfig:
    from gateway.config.loader import parse_limits, parse_policy_refs

    if not root.has("local"):
        root.mark_used("local")
        return LocalConfig(limits=default_limits)
    t = root.table_at("local")
    socket = t.string("socket", DEFAULT_SOCKET)
    mode = _mode(t.raw("mode", DEFAULT_MODE), t.key("mode"))
    policies = parse_policy_refs(t)
    senders = t.table_at("allowed_senders")
    allowed = []
    for user in sorted(senders.table):
        patterns = senders.strings(user)
        if user != EVERYONE and not _user_name_ok(user):
            raise ConfigError(senders.key(user), "is not a user name")
        allowed.append((user, patterns))
    senders.finish()  # the patterns themselves are checked where they are used (gateway.smtp.local)
    limits = parse_limits(t.table_at("limits"), default_limits)
    t.finish()
    # Connections are counted per client address, and every local user is one address.
    limits = attrs.evolve(limits, max_connections_per_ip=limits.max_connections)
    local = LocalConfig(socket=resolve(socket) if socket else None, mode=mode, policies=policies,
                        allowed_senders=tuple(allowed), limits=limits)
    if local.socket:
        check_endpoint(local.listener().endpoint, t.key("socket"))
    return local


def _mode(value: object, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and value and all(c in "01234567" for c in value):
        mode = int(value, 8)
    else:
        raise ConfigError(key, f"must be an octal permission such as \"0666\" or 0o660, not {value!r}")
    if not 0 <= mode <= 0o777:
        raise ConfigError(key, f"must be a permission from 0 to 0777, not {mode:o}")
    return mode


def _user_name_ok(name: str) -> bool:
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "._-$" for c in name)


__all__ = ["LocalConfig", "parse_local", "DEFAULT_SOCKET", "LISTENER_NAME", "LOGIN_PREFIX"]
