"""
The ``[status]`` section: where (if anywhere) the HTTP status endpoint listens, and who may read it.

The status page lists addresses (senders, recipients, mailboxes), so it is meant for loopback.
Bound elsewhere it can require a login from the users file (HTTP Basic through twisted.cred);
Basic sends the password in clear, so ``login = true`` on a plain-HTTP endpoint that is not
loopback is refused here, at configuration time, rather than leaking passwords on the wire.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Mapping, Optional

import attrs

from gateway.config.errors import ConfigError
from gateway.config.reader import TableReader, check_endpoint

_UNESCAPED_COLON = re.compile(r"(?<!\\):")


@attrs.frozen
class StatusConfig:
    """
    ``endpoint`` is a Twisted endpoint description; ``None`` (the default) serves nothing.
    ``login`` requires HTTP Basic with a users-file login (``users_file``, default
    ``[auth] users_file``); ``refresh`` is the page's auto-refresh in seconds (0: off);
    ``recent`` how many delivery outcomes the page lists; ``queue_scan_limit`` how many queued
    records (the oldest) the queue tables are built from.
    """

    endpoint: Optional[str] = None
    login: bool = False
    users_file: Optional[str] = None
    refresh: int = 30
    recent: int = 50
    queue_scan_limit: int = 2000


@attrs.frozen
class BindFacts:
    """What an endpoint description says about exposure: loopback-only (or a UNIX socket), TLS."""

    local: bool
    tls: bool


def bind_facts(description: str) -> BindFacts:
    """
    ``tcp:8025:interface=127.0.0.1`` → local, no TLS; ``ssl:8443:...`` → TLS; a TCP endpoint
    without ``interface`` listens on every address (not local); ``unix:`` is local; anything
    else (systemd sockets, plugins) is treated as not local, because it cannot be known here.
    """
    parts = _UNESCAPED_COLON.split(description)
    kind = parts[0].strip().lower()
    options = {}
    for part in parts[1:]:
        if "=" in part:
            name, _, value = part.partition("=")
            options[name.strip().lower()] = value.replace("\\:", ":").strip()
    tls = kind in ("ssl", "tls")
    if kind == "unix":
        return BindFacts(local=True, tls=tls)
    if kind not in ("tcp", "tcp6", "ssl"):
        return BindFacts(local=False, tls=tls)
    interface = options.get("interface", "")
    try:
        local = bool(interface) and ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        local = interface.lower() == "localhost"
    return BindFacts(local=local, tls=tls)


def parse_status(root: TableReader, environ: Mapping[str, str], resolve: object,
                 default_users_file: Optional[str] = None) -> StatusConfig:
    table = root.table_at("status")
    users_file = table.string("users_file")
    if users_file is not None and callable(resolve):
        users_file = resolve(users_file)
    users_file = users_file or default_users_file
    config = StatusConfig(
        endpoint=table.string("endpoint"),
        login=table.boolean("login", False),
        users_file=users_file,
        refresh=table.integer("refresh", 30, 0, 86400),
        recent=table.integer("recent", 50, 1, 10000),
        queue_scan_limit=table.integer("queue_scan_limit", 2000, 1, 1_000_000),
    )
    table.finish()
    if config.login and config.users_file is None:
        raise ConfigError(table.key("login"), "needs a users file: set status.users_file or auth.users_file")
    if config.endpoint:
        check_endpoint(config.endpoint, table.key("endpoint"))
        facts = bind_facts(config.endpoint)
        if config.login and not facts.local and not facts.tls:
            raise ConfigError(
                table.key("login"),
                f"HTTP Basic would send passwords in clear: {config.endpoint!r} is plain HTTP on a non-loopback "
                "address; use an ssl: endpoint (ssl:8443:privateKey=...:certKey=...) or bind to 127.0.0.1",
            )
    return config


__all__ = ["StatusConfig", "BindFacts", "bind_facts", "parse_status"]
