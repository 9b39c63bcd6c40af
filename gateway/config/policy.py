"""
The ``[redis]`` section (shared state for policies such as ``rate-limit``) and the
``[[observer]]`` list (delivery observers enabled by name).

``[redis]`` accepts either ``url`` (``redis://[user:password@]host[:port][/db]`` or
``unix:///path/to/redis.sock[?db=N]``) or the separate ``host``/``port``/``unix_socket``/``db``
keys, or ``sentinels = ["host:port", ...]`` with ``sentinel_master`` (Redis Sentinel).  The password is a L{Secret} (``password``, ``password_file`` or ``password_env``; a
password inside the URL is accepted and kept as a Secret too), so it never reaches a log line.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from gateway.config.errors import ConfigError
from gateway.config.reader import TableReader
from gateway.config.secrets import Secret, secret_from_table

Resolver = Callable[[str], str]


@attrs.frozen
class RedisConfig:
    """
    Where the shared Redis is.  ``unix_socket`` (when set) wins over ``host``/``port``.
    ``connect_timeout`` bounds one connection attempt, ``reply_timeout`` one command; a policy
    that cannot get an answer in time fails temporarily (451), never permanently.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    unix_socket: Optional[str] = None
    username: Optional[str] = None
    password: Optional[Secret] = None
    db: int = 0
    connect_timeout: float = 5.0
    reply_timeout: float = 2.0
    key_prefix: str = "graphsmtp"
    #: Redis Sentinel: ``(host, port)`` of each sentinel; the master named ``sentinel_master``
    #: is asked for through them (and followed when it fails over).  Empty: ``host``/``port``.
    sentinels: tuple = ()
    sentinel_master: str = "mymaster"

    def describe(self) -> str:
        """Where, for logs: never the password."""
        if self.sentinels:
            where = f"sentinel master {self.sentinel_master} via " + ",".join(f"{h}:{p}" for h, p in self.sentinels)
        else:
            where = f"unix:{self.unix_socket}" if self.unix_socket else f"{self.host}:{self.port}"
        return f"redis {where} db {self.db}"


@attrs.frozen
class ObserverRef:
    """One ``[[observer]]`` entry: the plugin name, its options, and the directory relative paths start from."""

    use: str
    options: Mapping[str, Any] = attrs.field(factory=dict)
    base_dir: str = "."
    key: str = "observer[0]"


def parse_redis(root: TableReader, environ: Mapping[str, str], resolve: Resolver) -> Optional[RedisConfig]:
    """The ``[redis]`` section, or None when it is absent (policies then keep state in memory)."""
    if not root.has("redis"):
        root.mark_used("redis")
        return None
    t = root.table_at("redis")
    values = _server(t, resolve)
    secret = secret_from_table(t.table, "password", t.where, environ, resolve)
    t.mark_used("password", "password_file", "password_env")
    if secret is not None:
        if values.get("password") is not None:
            raise ConfigError(t.key("password"), "is also given in url; set it in one place only")
        values["password"] = secret
    sentinels = _sentinels(t)
    if sentinels:
        values["sentinels"] = sentinels
    values["sentinel_master"] = t.string("sentinel_master", "mymaster")
    for name, default in (("connect_timeout", 5.0), ("reply_timeout", 2.0)):
        values[name] = t.duration(name, default)
    for name in ("connect_timeout", "reply_timeout"):
        if values[name] <= 0:
            raise ConfigError(t.key(name), "must be more than 0 seconds")
    prefix = t.string("key_prefix", "graphsmtp")
    if not prefix or any(c.isspace() for c in prefix):
        raise ConfigError(t.key("key_prefix"), "must be a non-empty word")
    values["key_prefix"] = prefix
    t.finish()
    return RedisConfig(**values)


def _server(t: TableReader, resolve: Resolver) -> dict[str, Any]:
    """Where Redis listens: from ``url``, or from host/port/unix_socket/db/username (never both)."""
    url = t.string("url")
    if url is not None:
        for k in ("host", "port", "unix_socket", "db", "username"):
            if t.has(k):
                raise ConfigError(t.key(k), "set either url or host/port/unix_socket/db/username, not both")
        return _parse_url(url, t.key("url"))
    values: dict[str, Any] = {"host": t.string("host", "127.0.0.1"), "port": t.integer("port", 6379, 1, 65535)}
    socket_path = t.string("unix_socket")
    if socket_path:
        values["unix_socket"] = resolve(socket_path)
    values["db"] = t.integer("db", 0, 0, 10000)
    values["username"] = t.string("username")
    return values


def _sentinels(t: TableReader) -> tuple[tuple[str, int], ...]:
    """The Redis Sentinel addresses: sentinels then say where the master is, so no url/host/port."""
    sentinels = t.strings("sentinels")
    if sentinels:
        for k in ("url", "host", "port", "unix_socket"):
            if t.has(k):
                raise ConfigError(t.key(k), "set either sentinels (Redis Sentinel) or url/host/port/unix_socket, not both")
    return tuple(_host_port(item, t.key("sentinels")) for item in sentinels)


def _host_port(text: str, key: str) -> tuple[str, int]:
    """``"10.0.0.5:26379"`` → ``("10.0.0.5", 26379)`` (a sentinel's address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"{text!r} is not host:port (e.g. \"10.0.0.5:26379\")")
    return host.strip("[]"), int(port)


def _parse_url(url: str, key: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(key, "is not a valid URL such as redis://127.0.0.1:6379/0") from None
    values: dict[str, Any] = {}
    if parts.password is not None:
        values["password"] = Secret(unquote(parts.password), source="redis url")
    if parts.username:
        values["username"] = unquote(parts.username)
    if parts.scheme == "redis":
        if not parts.hostname:
            raise ConfigError(key, "has no host: use redis://host:port/db")
        values["host"] = parts.hostname
        values["port"] = port or 6379
        path = parts.path.strip("/")
        db_text = path or "0"
    elif parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(key, "has no socket path: use unix:///path/to/redis.sock?db=0")
        values["unix_socket"] = parts.path
        db_text = parse_qs(parts.query).get("db", ["0"])[0]
    elif parts.scheme == "rediss":
        raise ConfigError(key, "TLS (rediss://) is not supported yet; reach Redis over loopback, a unix socket or a tunnel")
    else:
        # The URL may carry a password: never echo it back.
        raise ConfigError(key, f"scheme {parts.scheme!r} is not supported; use redis:// or unix://")
    if not db_text.isdigit():
        raise ConfigError(key, "database must be a number (redis://host:port/0)")
    values["db"] = int(db_text)
    return values


def parse_observers(root: TableReader, environ: Mapping[str, str], resolve: Resolver) -> tuple[ObserverRef, ...]:
    """The ``[[observer]]`` entries in order: ``use = "<plugin name>"`` plus that plugin's options."""
    raw = root.raw("observer", [])
    if not isinstance(raw, list):
        raise ConfigError("observer", "must be an array of tables: [[observer]] use = \"json-log\" ...")
    base_dir = resolve(".")
    refs = []
    for i, entry in enumerate(raw):
        key = f"observer[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("use"), str) or not entry.get("use"):
            raise ConfigError(key, "must be a table with use = \"<observer name>\", e.g. use = \"json-log\"")
        options = {k: v for k, v in entry.items() if k != "use"}
        refs.append(ObserverRef(use=entry["use"], options=options, base_dir=base_dir, key=key))
    return tuple(refs)


__all__ = ["RedisConfig", "ObserverRef", "parse_redis", "parse_observers"]
