"""
The typed, immutable configuration the whole gateway runs on.

Everything is validated when it is built (gateway.config.loader), so code that receives these
values never re-checks them.  Defaults are the safe ones: loopback only, closed relay, durable
spool, capture outbox until Graph credentials are configured.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import attrs

if TYPE_CHECKING:
    from gateway.config.auth import AuthConfig
    from gateway.config.cluster import ClusterConfig
    from gateway.config.local import LocalConfig
    from gateway.config.policy import ObserverRef, RedisConfig
    from gateway.config.status import StatusConfig
    from gateway.config.workers import WorkersConfig

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"
# Who may send a PROXY header when a listener's proxy_trusted_networks is not set: a load
# balancer on this machine (HAProxy beside the gateway), nobody else.
LOOPBACK_NETWORKS: tuple = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# How long a PROXY-protocol peer has for its header (HAProxy sends it with the first segment).
DEFAULT_PROXY_HEADER_TIMEOUT = 5.0
DEFAULT_STATE_DIR = "graphsmtp-data"


@attrs.frozen
class Limits:
    """
    Per-listener protocol limits.  The defaults follow Exchange Online where it has a figure
    (35 MB message, 500 recipients, 256 KB of headers) and RFC 5321 §4.5.3.2 for timeouts.
    """

    max_message_size: int = 35 * 1000 * 1000
    max_recipients: int = 500
    max_command_line: int = 2048
    max_data_line: int = 64 * 1024
    max_header_size: int = 256 * 1024
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    session_timeout: float = 3600.0
    max_connections: int = 200
    max_connections_per_ip: int = 20
    max_errors: int = 10
    max_commands_before_mail: int = 50
    max_messages_per_session: int = 1000


@attrs.frozen
class PolicyRef:
    """One entry of a policy chain: the plugin name and its options table."""

    use: str
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ListenerConfig:
    """
    One SMTP listener.  ``endpoint`` is a Twisted server endpoint description (``tcp:``,
    ``ssl:``, ``systemd:``, ``haproxy:``...).  ``tls`` says how TLS is offered: ``"none"``,
    ``"starttls"`` (needs a certificate) or ``"implicit"`` (TLS from the first byte, port 465
    style; the certificate comes from ``tls_cert``/``tls_key``).

    With ``proxy_protocol`` only peers in ``proxy_trusted_networks`` may connect (their PROXY
    header is believed; anyone else could name any client address), and the header must arrive
    within ``proxy_header_timeout`` seconds.
    """

    name: str
    endpoint: str
    limits: Limits = attrs.field(factory=Limits)
    tls: str = "none"
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_min_version: str = "1.2"
    # OpenSSL cipher string for TLS ≤ 1.2 suites; None: the safe default for tls_min_version
    # (gateway.smtp.tls).  TLS 1.3 suites are not affected.
    tls_ciphers: Optional[str] = None
    auth: str = "none"
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    allow_plaintext_auth: bool = False
    trusted_networks: tuple[IPNetwork, ...] = ()
    trusted_senders: tuple[str, ...] = ()
    proxy_protocol: bool = False
    proxy_trusted_networks: tuple[IPNetwork, ...] = LOOPBACK_NETWORKS
    proxy_header_timeout: float = DEFAULT_PROXY_HEADER_TIMEOUT
    policies: tuple[PolicyRef, ...] = ()


@attrs.frozen
class SpoolConfig:
    """Where accepted mail lives until it is delivered; see gateway.spool for the layout."""

    directory: str
    threads: int = 4
    archive_delivered: bool = False
    # How a group commit makes its messages' data durable: "auto" = one syncfs of the spool's
    # filesystem per batch where the kernel reports its errors (Linux >= 5.8), else one
    # fdatasync per file; "fdatasync" = always one per file.
    flush: str = "auto"
    # Where intake's group commits run: "process" = a child process of their own (the file work
    # then never waits for the GIL the SMTP sessions hold; gateway.spool.commit_process);
    # "thread" = the spool's thread pool.
    committer: str = "process"
    # Whether the commit process makes a batch durable with one fdatasync of its intake journal
    # (gateway.spool.journal) instead of a flush of the filesystem.  Only with committer =
    # "process" and flush = "auto" on Linux; off, every batch waits for a syncfs.
    journal: bool = True


@attrs.frozen
class QueueConfig:
    """
    How the queue runner retries: backoff schedule (seconds), jitter fraction, lifetime, and
    ``attempt_timeout``: how long one delivery attempt may take before the runner gives up on
    it (a safety net under the deliverer's own network timeouts; large uploads need time).
    """

    concurrency: int = 64
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0)
    jitter: float = 0.2
    max_lifetime: float = 5 * 86400.0
    shutdown_grace: float = 30.0
    attempt_timeout: float = 1800.0
    # Commit every newly accepted message straight into the spool's held/ directory instead of
    # the queue: accepted durably, delivered only after ``graphsmtp-queue release``.  For
    # maintenance windows and for benchmarks comparing with Postfix's hold queue.
    hold_new: bool = False


@attrs.frozen
class CaptureConfig:
    """The local Maildir outbox used when no Graph credentials are configured."""

    outbox: str


def _no_auth() -> "AuthConfig":
    from gateway.config.auth import AuthConfig

    return AuthConfig()


def _one_process() -> "WorkersConfig":
    from gateway.config.workers import WorkersConfig

    return WorkersConfig()


def _no_status() -> "StatusConfig":
    from gateway.config.status import StatusConfig

    return StatusConfig()


def _no_local() -> "LocalConfig":
    from gateway.config.local import LocalConfig

    return LocalConfig()


@attrs.frozen
class GatewayConfig:
    """
    The whole configuration, one typed field per section.  ``graph`` is ``None`` until Graph
    credentials are configured; ``deliverer`` is then ``"graph"``, otherwise ``"capture"``.
    Optional features keep their own value types in their own modules (``auth``: L{AuthConfig},
    ``status``: L{StatusConfig}, ...); ``None`` means the section is absent where absence means
    "off" (``redis``, ``cluster``).
    """

    hostname: str
    state_dir: str
    listeners: tuple[ListenerConfig, ...]
    spool: SpoolConfig
    queue: QueueConfig
    capture: CaptureConfig
    deliverer: str = "capture"
    #: ``[graph]``: a L{GraphConfig}, or None.  Typed ``Any`` until the readers that rely on
    #: ``deliverer == "graph"`` (rather than a None check) narrow it themselves.
    graph: Any = None
    add_message_id: bool = True
    add_date: bool = True
    #: ``[gateway] plugin_paths``: directories (each with ``twisted/plugins/``) searched for plugins.
    plugin_paths: tuple[str, ...] = ()
    #: ``[auth]``: users file, login throttle, Entra pass-through (defaults when absent).
    auth: "AuthConfig" = attrs.field(factory=_no_auth)
    #: ``[redis]``: the connection shared policies and ``[cluster]`` use; None without one.
    redis: Optional["RedisConfig"] = None
    #: ``[[observer]]``: delivery observers named in the file, in order.
    observers: tuple["ObserverRef", ...] = ()
    #: ``[status]``: the HTTP status endpoint (``endpoint`` None: none).
    status: "StatusConfig" = attrs.field(factory=_no_status)
    #: ``[cluster]``: gateways sharing one tenant's limits; None: this gateway paces alone.
    cluster: Optional["ClusterConfig"] = None
    #: ``[local]``: the UNIX submission socket (``socket`` None: none).
    local: "LocalConfig" = attrs.field(factory=_no_local)
    #: ``[gateway] workers``: intake worker processes (count 1: none, the main process serves).
    workers: "WorkersConfig" = attrs.field(factory=_one_process)


__all__ = [
    "DEFAULT_LISTEN", "DEFAULT_STATE_DIR", "Limits", "PolicyRef", "ListenerConfig",
    "SpoolConfig", "QueueConfig", "CaptureConfig", "GatewayConfig",
]
