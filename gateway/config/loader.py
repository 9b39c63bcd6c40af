"""
Build a L{GatewayConfig} from a TOML file, command-line overrides and the environment.

Precedence: built-in defaults < TOML file < command-line options.  Everything is validated
here, before any port is bound, and every problem is one L{ConfigError} naming the key.
"""

from __future__ import annotations

import os
import socket
import tomllib
from typing import Any, Callable, Mapping, Optional

import attrs

from gateway.config.errors import ConfigError
from gateway.config.model import (
    DEFAULT_LISTEN,
    DEFAULT_PROXY_HEADER_TIMEOUT,
    DEFAULT_STATE_DIR,
    LOOPBACK_NETWORKS,
    CaptureConfig,
    GatewayConfig,
    Limits,
    ListenerConfig,
    PolicyRef,
    QueueConfig,
    SpoolConfig,
)
from gateway.config.plugin_paths import parse_plugin_paths
from gateway.config.reader import TableReader, check_endpoint, parse_duration
from gateway.config.workers import read_workers, resolve_workers

Resolver = Callable[[str], str]

_TLS_MODES = ("none", "starttls", "implicit")
_AUTH_MODES = ("none", "optional", "required")
_TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
_MECHANISMS = ("PLAIN", "LOGIN")


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML file, turning every way it can go wrong into one ConfigError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("--config", f"file {path} does not exist") from None
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path} is not valid TOML: {e}") from None


def load_config(
    path: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    environ: Mapping[str, str] = os.environ,
) -> GatewayConfig:
    """
    The one entry point: read ``path`` (if any), apply ``overrides`` (from twistd options:
    ``listen``, ``state_dir``, ``spool``, ``outbox``, ``hostname``, ``deliverer``) and validate.
    """
    data = load_toml(path) if path else {}
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    try:
        return build_config(data, overrides or {}, environ, base_dir)
    except ConfigError as e:
        if path:
            raise e.in_file(path) from None
        raise


@attrs.frozen
class _GatewayTable:
    """``[gateway]``: who the gateway is and where it keeps its state."""

    hostname: str
    state_dir: str
    add_message_id: bool
    add_date: bool
    plugin_paths: tuple[str, ...]
    workers: Any  # "auto" or a count, resolved against the listeners


def build_config(
    data: Mapping[str, Any],
    overrides: Mapping[str, Any],
    environ: Mapping[str, str],
    base_dir: str,
) -> GatewayConfig:
    """Every section, each parsed by its own function (feature sections import on use, as plugins do)."""
    from gateway.config.auth import parse_auth_section
    from gateway.config.cluster import check_cluster, parse_cluster
    from gateway.config.graph import parse_graph_section
    from gateway.config.local import LISTENER_NAME as LOCAL_LISTENER_NAME
    from gateway.config.local import parse_local
    from gateway.config.policy import parse_observers, parse_redis
    from gateway.config.status import parse_status

    root = TableReader(data, "")

    def resolve(p: str) -> str:
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(p)))

    gateway = _parse_gateway(root.table_at("gateway"), overrides, resolve)
    default_limits = parse_limits(root.table_at("limits"), Limits())
    listeners = _parse_listeners(root, overrides, default_limits)
    spool = _parse_spool(root.table_at("spool"), overrides, gateway.state_dir, resolve)
    queue = _parse_queue(root.table_at("queue"))
    requested, capture = _parse_delivery(root.table_at("delivery"), overrides, gateway.state_dir, resolve)
    graph = parse_graph_section(root.table_at("graph"), environ, resolve) if root.has("graph") else None
    if requested == "graph" and graph is None:
        raise ConfigError("delivery.deliverer", "is \"graph\" but no [graph] tenant_id/client_id/credentials are configured")
    redis = parse_redis(root, environ, resolve)
    observers = parse_observers(root, environ, resolve)
    auth = parse_auth_section(root, environ, resolve)
    status = parse_status(root, environ, resolve, default_users_file=auth.users_file)
    cluster = parse_cluster(root, environ, resolve)
    check_cluster(cluster, redis)
    local = parse_local(root, default_limits, resolve)
    if local.socket and any(listener.name == LOCAL_LISTENER_NAME for listener in listeners):
        raise ConfigError("listener.sendmail.name", "\"sendmail\" is the name of the [local] socket; choose another")
    root.finish()
    return GatewayConfig(
        hostname=gateway.hostname, state_dir=gateway.state_dir, listeners=listeners, spool=spool, queue=queue,
        capture=capture, deliverer="capture" if requested == "capture" or graph is None else "graph", graph=graph,
        add_message_id=gateway.add_message_id, add_date=gateway.add_date, plugin_paths=gateway.plugin_paths,
        auth=auth, redis=redis, observers=observers, status=status, cluster=cluster, local=local,
        workers=resolve_workers(gateway.workers, listeners),
    )


def _parse_gateway(gw: TableReader, overrides: Mapping[str, Any], resolve: Resolver) -> _GatewayTable:

    hostname = overrides.get("hostname") or gw.string("hostname") or socket.gethostname()
    gw.mark_used("hostname")
    _check_hostname(hostname, "gateway.hostname")
    state_dir = resolve(_pick(overrides, "state_dir", gw.string("state_dir", DEFAULT_STATE_DIR)))
    add_message_id = gw.boolean("add_message_id", True)
    add_date = gw.boolean("add_date", True)
    plugin_paths = parse_plugin_paths(gw.strings("plugin_paths"), resolve, "gateway.plugin_paths")
    workers = read_workers(gw)
    gw.finish()
    return _GatewayTable(hostname, state_dir, add_message_id, add_date, plugin_paths, workers)


def _parse_spool(sp: TableReader, overrides: Mapping[str, Any], state_dir: str, resolve: Resolver) -> SpoolConfig:
    spool = SpoolConfig(
        directory=resolve(_pick(overrides, "spool", sp.string("directory", os.path.join(state_dir, "spool")))),
        threads=sp.integer("threads", 4, 1, 64),
        archive_delivered=sp.boolean("archive_delivered", False),
        flush=sp.word("flush", "auto", ("auto", "fdatasync")),
        committer=sp.word("committer", "process", ("process", "thread")),
        journal=sp.boolean("journal", True),
    )
    sp.finish()
    return spool


def _parse_queue(q: TableReader) -> QueueConfig:
    queue = QueueConfig(
        concurrency=q.integer("concurrency", 64, 1, 1000),
        retry_schedule=_retry_schedule(q),
        jitter=q.number("jitter", 0.2),
        max_lifetime=q.duration("max_lifetime", 5 * 86400.0),
        shutdown_grace=q.duration("shutdown_grace", 30.0),
        attempt_timeout=q.duration("attempt_timeout", 1800.0),
        hold_new=q.boolean("hold_new", False),
    )
    if queue.attempt_timeout <= 0:
        raise ConfigError("queue.attempt_timeout", "must be more than 0 seconds")
    if queue.jitter > 1:
        raise ConfigError("queue.jitter", "must be a fraction from 0 to 1")
    q.finish()
    return queue


def _retry_schedule(q: TableReader) -> tuple[float, ...]:
    schedule = q.raw("retry_schedule", None)
    if schedule is None:
        return QueueConfig().retry_schedule
    if not isinstance(schedule, list) or not schedule:
        raise ConfigError("queue.retry_schedule", "must be a non-empty list of durations")
    retry_schedule = tuple(parse_duration(v, f"queue.retry_schedule[{i}]") for i, v in enumerate(schedule))
    if retry_schedule[-1] <= 0:
        # The last value repeats until max_lifetime: 0 would retry in a hot loop for days.
        raise ConfigError(f"queue.retry_schedule[{len(retry_schedule) - 1}]", "the last value repeats and must be more than 0 seconds")
    return retry_schedule


def _parse_delivery(dl: TableReader, overrides: Mapping[str, Any], state_dir: str,
                    resolve: Resolver) -> tuple[str, CaptureConfig]:
    """The deliverer asked for (``auto``, ``capture`` or ``graph``) and the capture outbox."""
    requested = _pick(overrides, "deliverer", dl.string("deliverer", "auto", ("auto", "capture", "graph")))
    cap = dl.table_at("capture")
    capture = CaptureConfig(outbox=resolve(_pick(overrides, "outbox", cap.string("outbox", os.path.join(state_dir, "outbox")))))
    cap.finish()
    dl.finish()
    return requested, capture


def _pick(overrides: Mapping[str, Any], name: str, from_file: Any) -> Any:
    """A command-line override wins over the (already validated) file value."""
    return overrides.get(name) or from_file


def parse_limits(table: TableReader, base: Limits) -> Limits:
    """Limits from a table, each unset key falling back to ``base`` (the global defaults)."""
    limits = Limits(
        max_message_size=table.size("max_message_size", base.max_message_size),
        max_recipients=table.integer("max_recipients", base.max_recipients, 1, 100000),
        max_command_line=table.integer("max_command_line", base.max_command_line, 512, 65536),
        max_data_line=table.integer("max_data_line", base.max_data_line, 1000, 16 * 1024 * 1024),
        max_header_size=table.size("max_header_size", base.max_header_size),
        idle_timeout=table.duration("idle_timeout", base.idle_timeout),
        data_timeout=table.duration("data_timeout", base.data_timeout),
        session_timeout=table.duration("session_timeout", base.session_timeout),
        max_connections=table.integer("max_connections", base.max_connections, 1, 1000000),
        max_connections_per_ip=table.integer("max_connections_per_ip", base.max_connections_per_ip, 1, 1000000),
        max_errors=table.integer("max_errors", base.max_errors, 1, 10000),
        max_commands_before_mail=table.integer("max_commands_before_mail", base.max_commands_before_mail, 1, 100000),
        max_messages_per_session=table.integer("max_messages_per_session", base.max_messages_per_session, 1, 1000000),
    )
    table.finish()
    if limits.max_message_size < 1024:
        raise ConfigError(table.key("max_message_size"), "must be at least 1024 bytes")
    if limits.max_header_size < 1024:
        # Smaller refuses nearly every message (a Received line alone is ~200 bytes).
        raise ConfigError(table.key("max_header_size"), "must be at least 1024 bytes")
    for name in ("idle_timeout", "data_timeout", "session_timeout"):
        if getattr(limits, name) <= 0:
            raise ConfigError(table.key(name), "must be more than 0 seconds")
    return limits


def _parse_listeners(root: TableReader, overrides: Mapping[str, Any], default_limits: Limits) -> tuple[ListenerConfig, ...]:
    listen_override = overrides.get("listen")
    raw = root.raw("listener", [])
    if listen_override:
        # --listen replaces the configured listeners with plain, closed ones: the quick way to
        # move the port without editing the file.
        endpoints = [listen_override] if isinstance(listen_override, str) else list(listen_override)
        raw = [
            {"name": f"listen{i}" if i else "default", "endpoint": e, "trusted_networks": ["127.0.0.0/8", "::1/128"]}
            for i, e in enumerate(endpoints)
        ]
    if not isinstance(raw, list):
        raise ConfigError("listener", "must be an array of tables: [[listener]]")
    if not raw:
        # With no listener configured the gateway serves this machine only: loopback, and
        # loopback clients may relay (there is nobody else who could reach it).
        raw = [{"name": "default", "endpoint": DEFAULT_LISTEN, "trusted_networks": ["127.0.0.0/8", "::1/128"]}]
    listeners = []
    names = set()
    for i, table in enumerate(raw):
        name = table.get("name") if isinstance(table, Mapping) else None
        where = f"listener.{name}" if isinstance(name, str) and name else f"listener[{i}]"
        listener = parse_listener(TableReader(table, where), default_limits)
        if listener.name in names:
            raise ConfigError(f"{where}.name", f"duplicate listener name {listener.name!r}")
        names.add(listener.name)
        listeners.append(listener)
    return tuple(listeners)


def parse_listener(t: TableReader, default_limits: Limits) -> ListenerConfig:
    name = t.string("name")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(t.key("name"), "is required: letters, digits, - and _")
    endpoint = t.string("endpoint")
    if not endpoint:
        raise ConfigError(t.key("endpoint"), "is required, e.g. \"tcp:587:interface=0.0.0.0\"")
    tls, tls_cert, tls_key = _parse_tls_files(t)
    auth, mechanisms, allow_plaintext_auth = _parse_auth_settings(t, tls)
    endpoint, proxy_protocol = _proxy_endpoint(t, endpoint)
    check_endpoint(endpoint, t.key("endpoint"))
    proxy_trusted_networks, proxy_header_timeout = _parse_proxy_peers(t, proxy_protocol)
    policies = parse_policy_refs(t)
    listener = ListenerConfig(
        name=name,
        endpoint=endpoint,
        limits=parse_limits(t.table_at("limits"), default_limits),
        tls=tls,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_min_version=t.word("tls_min_version", "1.2", _TLS_VERSIONS),
        tls_ciphers=_cipher_string(t),
        auth=auth,
        auth_mechanisms=mechanisms,
        allow_plaintext_auth=allow_plaintext_auth,
        trusted_networks=t.networks("trusted_networks"),
        trusted_senders=t.strings("trusted_senders"),
        proxy_protocol=proxy_protocol,
        proxy_trusted_networks=proxy_trusted_networks,
        proxy_header_timeout=proxy_header_timeout,
        policies=policies,
    )
    t.finish()
    return listener


def _parse_tls_files(t: TableReader) -> tuple[str, Optional[str], Optional[str]]:
    """``tls``, ``tls_cert`` and ``tls_key``: a TLS mode needs a certificate, a key needs one too."""
    tls = t.word("tls", "none", _TLS_MODES)
    tls_cert = t.string("tls_cert")
    tls_key = t.string("tls_key")
    if tls != "none" and not tls_cert:
        raise ConfigError(t.key("tls_cert"), f"is required when tls = \"{tls}\"")
    if tls_key and not tls_cert:
        raise ConfigError(t.key("tls_cert"), "is required when tls_key is set")
    return tls, tls_cert, tls_key


def _parse_auth_settings(t: TableReader, tls: str) -> tuple[str, tuple[str, ...], bool]:
    """``auth``, ``auth_mechanisms`` and ``allow_plaintext_auth``: no required AUTH in clear by accident."""
    auth = t.word("auth", "none", _AUTH_MODES)
    mechanisms = tuple(m.upper() for m in t.strings("auth_mechanisms", ("PLAIN", "LOGIN")))
    for m in mechanisms:
        if m not in _MECHANISMS:
            raise ConfigError(t.key("auth_mechanisms"), f"{m!r} is not supported; use PLAIN and/or LOGIN")
    allow_plaintext_auth = t.boolean("allow_plaintext_auth", False)
    if auth == "required" and tls == "none" and not allow_plaintext_auth:
        raise ConfigError(t.key("auth"), "is \"required\" but the listener has no TLS; set tls or allow_plaintext_auth = true (loopback only)")
    return auth, mechanisms, allow_plaintext_auth


def _proxy_endpoint(t: TableReader, endpoint: str) -> tuple[str, bool]:
    """
    PROXY protocol is Twisted's haproxy: endpoint wrapper; the flag and the prefix mean the
    same thing, so either one turns on the other (a flag that parsed nothing would silently
    make every client look like the load balancer).
    """
    proxy_protocol = t.boolean("proxy_protocol", False) or endpoint.startswith("haproxy:")
    if proxy_protocol and not endpoint.startswith("haproxy:"):
        endpoint = "haproxy:" + endpoint
    return endpoint, proxy_protocol


def _cipher_string(t: TableReader) -> Optional[str]:
    """``tls_ciphers``: checked for shape here; OpenSSL judges the suites when the listener is built."""
    value = t.string("tls_ciphers")
    if value is None:
        return None
    if not value.strip() or not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(t.key("tls_ciphers"), "must be an OpenSSL cipher string such as \"ECDHE+AESGCM:!aNULL\"")
    return value


def parse_policy_refs(t: TableReader) -> tuple[PolicyRef, ...]:
    """A ``policies = [{ use = "...", ... }, ...]`` list (a listener's, or ``[local]``'s)."""
    policies_raw = t.raw("policies", [])
    if not isinstance(policies_raw, list):
        raise ConfigError(t.key("policies"), "must be a list of tables like { use = \"sender-allowlist\", ... }")
    policies = []
    for i, p in enumerate(policies_raw):
        if not isinstance(p, Mapping) or not isinstance(p.get("use"), str) or not p.get("use"):
            raise ConfigError(f"{t.key('policies')}[{i}]", "must be a table with use = \"<policy name>\"")
        policies.append(PolicyRef(use=p["use"], options={k: v for k, v in p.items() if k != "use"}))
    return tuple(policies)


def _parse_proxy_peers(t: TableReader, proxy_protocol: bool) -> tuple[tuple, float]:
    """
    ``proxy_trusted_networks`` and ``proxy_header_timeout`` of a listener.  Both only mean
    something behind PROXY protocol; set on a plain listener they would suggest a protection
    that is not there, so they are refused.  A network that covers every address (``/0``)
    would believe a PROXY header from anyone — the hole these keys close — and is refused too.
    """
    if not proxy_protocol:
        for name in ("proxy_trusted_networks", "proxy_header_timeout"):
            if t.has(name):
                raise ConfigError(t.key(name), "only applies to PROXY-protocol listeners (proxy_protocol = true or a haproxy: endpoint)")
        return LOOPBACK_NETWORKS, DEFAULT_PROXY_HEADER_TIMEOUT
    networks = t.networks("proxy_trusted_networks", [str(n) for n in LOOPBACK_NETWORKS])
    if not networks:
        raise ConfigError(t.key("proxy_trusted_networks"), "must name at least one network: the load balancers that send the PROXY header")
    for network in networks:
        if network.prefixlen == 0:
            raise ConfigError(t.key("proxy_trusted_networks"),
                              f"{network} would believe a PROXY header from any address; name the load balancers' own addresses")
    timeout = t.duration("proxy_header_timeout", DEFAULT_PROXY_HEADER_TIMEOUT)
    if not 0 < timeout <= 120:
        raise ConfigError(t.key("proxy_header_timeout"), "must be more than 0 and at most 120 seconds")
    return networks, timeout


def _check_hostname(name: str, key: str) -> None:
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(
        label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels
    ):
        raise ConfigError(key, f"{name!r} is not a valid host name")


__all__ = ["load_config", "build_config", "load_toml", "parse_limits", "parse_listener", "parse_policy_refs"]
