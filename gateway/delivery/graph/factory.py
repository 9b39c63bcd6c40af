"""
Builds a ready Graph deliverer from configuration: thread pools, HTTP pool, TLS policy, token
providers, tenant health monitor.  The composition root calls L{build_graph_delivery} and
starts the returned services (thread pools first; the HTTP pool's service closes idle
connections on stop).  Everything the deliverer needs is a constructor argument: nothing is
set on it after it is built.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, cast

import attrs
from treq.client import HTTPClient
from twisted.application.service import IService, Service
from twisted.internet import ssl
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gateway.callback_free_tls import HostnameVerifyingPolicy
from gateway.config.graph import GraphConfig
from gateway.delivery.graph.body import cooperator_for
from gateway.delivery.graph.client import GraphClient
from gateway.delivery.graph.credentials import (
    ConfigCredentialResolver,
    ICredentialResolver,
    credentials_from_config,
)
from gateway.delivery.graph.deliverer import GraphDeliverer
from gateway.delivery.graph.tenant_health import MonitoredTokens, TenantHealthMonitor
from gateway.delivery.graph.token import TokenProviders
from gateway.threads import ThreadPoolService

log = Logger(namespace="gateway.delivery.graph.factory")


class ConnectionsService(Service):
    """Closes the persistent Graph connections and MSAL's HTTP sessions on shutdown."""

    def __init__(self, pool: HTTPConnectionPool, tokens: Optional[TokenProviders] = None) -> None:
        self.pool = pool
        self.tokens = tokens
        self.setName("graph-connections")

    def stopService(self) -> Any:
        super().stopService()
        if self.tokens is not None:
            self.tokens.close()
        return self.pool.closeCachedConnections()


@implementer(IPolicyForHTTPS)
class CachedTLSPolicy:
    """
    One TLS connection creator per (host, port), reused: the Agent asks its policy for every
    request, even over a kept-alive connection, and building the options (cipher selection,
    IDNA checks) was a fifth of the daemon's CPU per message in bench_drain.  A creator makes
    a fresh TLS connection each time it is used, so sharing it is safe.
    """

    LIMIT = 64

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self._creators: dict = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        key = (hostname, port)
        creator = self._creators.get(key)
        if creator is None:
            if len(self._creators) >= self.LIMIT:
                self._creators.clear()
            creator = self._creators[key] = self._policy.creatorForNetloc(hostname, port)
        return creator


def tls_policy(ca_bundle: Optional[str]) -> HostnameVerifyingPolicy:
    """
    Verify servers against ``ca_bundle`` (PEM, may hold several certificates) or the system
    store.  OpenSSL checks the host name itself (no cffi callback), so HTTPS keeps working
    under the systemd unit's MemoryDenyWriteExecute=yes.
    """
    if not ca_bundle:
        return HostnameVerifyingPolicy()
    with open(ca_bundle, "rb") as f:
        data = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    certs = [ssl.Certificate.loadPEM(marker + chunk) for chunk in data.split(marker)[1:]]
    if not certs:
        raise ValueError(f"{ca_bundle} holds no PEM certificate")
    return HostnameVerifyingPolicy(trust_root=ssl.trustRootFromCertificates(certs))


#: Default number of kept-alive Graph connections: as many as deliveries may be in flight
#: (``[queue] concurrency``), so a busy gateway does not pay a TLS handshake per request.
PERSISTENT_CONNECTIONS = 64


def send_now(transport: Any) -> None:
    """
    Hand what was just written on a Graph connection to the kernel now, not on the next
    reactor turn.  Twisted's TLS layer keeps small writes until a ``callLater(0)`` and its TCP
    transport writes when ``epoll`` next reports the socket writable: the requests started
    while the reactor handled a batch of answers left together after the whole batch, Graph
    answered them together, and the batch stayed a batch — each request waiting for the
    others of its batch (bench_drain at 20 mailboxes, 40 in flight: 75-81 % of the ceiling,
    94-96 % with this).  Best effort: an error is left for the reactor's own next write.
    """
    aggregator = getattr(transport, "_aggregator", None)  # TLSMemoryBIOProtocol
    if aggregator is not None:
        aggregator.flush()
    socket_transport = getattr(transport, "transport", None)
    if socket_transport is None or not getattr(socket_transport, "connected", False):
        return
    if getattr(socket_transport, "disconnecting", False) or not getattr(socket_transport, "_tempDataBuffer", None):
        return
    do_write = getattr(socket_transport, "doWrite", None)
    if do_write is not None:
        do_write()


class _PromptHTTP11ClientProtocol(HTTP11ClientProtocol):
    """A Graph connection that sends each request as soon as it is written (L{send_now})."""

    def request(self, request: Any) -> Any:
        d = super().request(request)
        send_now(self.transport)
        return d


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    """
    Twisted's factory for one Graph connection, without its "Starting/Stopping factory" lines,
    building connections that send each request at once.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _PromptHTTP11ClientProtocol(self._quiescentCallback)


class QuietConnectionPool(HTTPConnectionPool):
    """
    The Graph connection pool.  Twisted's own logs two info lines ("Starting factory …",
    "Stopping factory …") for every new connection: during an outage that is two lines of
    noise per delivery attempt, more than the attempt's own state-change line.
    """

    _factory = _QuietHTTP11ClientFactory


def build_http_client(config: GraphConfig, reactor: Any, on_request: Any = None,
                      connections: int = PERSISTENT_CONNECTIONS) -> tuple[GraphClient, HTTPConnectionPool]:
    pool = QuietConnectionPool(reactor, persistent=True)
    # Fewer kept-alive connections than requests in flight turned most requests into a new
    # TLS handshake (bench_drain: 572 handshakes for 1,000 messages with 40 in flight).
    pool.maxPersistentPerHost = connections
    policy = CachedTLSPolicy(tls_policy(config.verify))
    if config.https_proxy:
        from gateway.delivery.graph.proxy import TunnelingEndpointFactory
        tunnels = TunnelingEndpointFactory(reactor, config.https_proxy, policy, config.connect_timeout)
        agent = Agent.usingEndpointFactory(reactor, tunnels, pool=pool)
    else:
        agent = Agent(reactor, contextFactory=policy, connectTimeout=config.connect_timeout, pool=pool)
    client = GraphClient(
        HTTPClient(agent),
        reactor,
        cooperator_for(reactor),
        request_timeout=config.request_timeout,
        body_timeout=config.request_timeout,
        on_unavailable=pool.closeCachedConnections,
        on_request=on_request,
    )
    return client, pool


@attrs.frozen
class GraphDelivery:
    """
    Everything delivery through Graph consists of, as built by L{build_graph_delivery}.

    ``services`` start in order (the MSAL and file thread pools, the HTTP pool, then the tenant
    health monitor, whose first probe runs in the MSAL pool) and stop in reverse.
    ``observers`` are delivery observers Graph needs told (the DSN sender when ``graph.dsn``
    is on).  ``tenant_monitor`` probes a token for every configured tenant at start-up and
    before expiry: its ``health()`` is what ``/healthz`` and ``/metrics`` read.
    """

    deliverer: GraphDeliverer
    services: tuple[IService, ...]
    observers: tuple[Any, ...]
    tenant_monitor: TenantHealthMonitor


def build_graph_delivery(
    config: GraphConfig,
    reactor: Any,
    resolver: Optional[ICredentialResolver] = None,
    on_request: Any = None,
    connections: int = PERSISTENT_CONNECTIONS,
    admission: Any = None,
    journal: Any = None,
) -> GraphDelivery:
    """
    A L{GraphDeliverer} and what it needs running (see L{GraphDelivery}).  ``resolver``
    defaults to the configured tenant only; pass the auth feature's resolver to add
    pass-through logins.  ``on_request(method, url, status, seconds)`` is told about every Graph
    request (metrics).  ``connections``: Graph connections kept alive (the composition root
    passes ``[queue] concurrency``).  ``admission``: ``[cluster]``'s
    L{gateway.cluster.admission.ClusterAdmission}, shared by every gateway of the cluster (None:
    the runner's own mailbox queues pace alone).  ``journal``: the spool's L{IDraftJournal} and
    L{IEntryQuarantine} (None: the deliverer keeps no drafts across restarts).
    """
    token_pool = ThreadPoolService("graphsmtp-msal", 1, config.token_threads)
    io_pool = ThreadPoolService("graphsmtp-graph-io", 1, config.io_threads)
    client, http_pool = build_http_client(config, reactor, on_request, connections)
    proxies = {"https": config.https_proxy} if config.https_proxy else None
    tokens = TokenProviders(reactor, token_pool.pool, verify=config.verify, proxies=proxies,
                            timeout=config.token_timeout)
    default = credentials_from_config(config)
    blocking = functools.partial(deferToThreadPool, reactor, io_pool.pool)
    # The monitor reads the deliverer's own tenant view (a tenant Graph refused reads
    # needs-admin) and the deliverer tells the monitor about every token it asks for: each
    # is built knowing the other, through this late-bound reference.
    deliverer: Optional[GraphDeliverer] = None
    monitor = TenantHealthMonitor(tokens, [default], reactor, retry=config.tenant_backoff,
                                  retry_max=config.tenant_backoff_max,
                                  graph_view=lambda: deliverer.health() if deliverer is not None else ())
    # MonitoredTokens stands in for TokenProviders: the same acquire(), the rest delegated.
    monitored = cast(TokenProviders, MonitoredTokens(tokens, monitor))
    deliverer = GraphDeliverer(
        config, client, monitored, resolver or ConfigCredentialResolver(default), reactor,
        blocking=blocking, default_credentials=default, journal=journal, admission=admission)
    observers: tuple[Any, ...] = ()
    if config.dsn and config.postmaster:
        from gateway.delivery.graph.dsn import DSNObserver
        observers = (DSNObserver(client, tokens, default, config.postmaster, reactor, blocking=blocking),)
    if not config.save_to_sent_items:
        log.warn("graph.save_to_sent_items = false has no effect on MIME sends: Graph's MIME sendMail and draft "
                 "send always keep a copy in Sent Items (only JSON sends can skip it)")
    services = (token_pool, io_pool, ConnectionsService(http_pool, tokens), monitor)
    return GraphDelivery(deliverer, services, observers, monitor)


def build_graph_deliverer(config: GraphConfig, reactor: Any, **options: Any) -> tuple[GraphDeliverer, list[IService]]:
    """
    The deliverer and its services only (benchmarks and tests that drive a bare deliverer);
    the composition root uses L{build_graph_delivery}, which also returns the observers and
    the tenant monitor.  Same keyword arguments.
    """
    delivery = build_graph_delivery(config, reactor, **options)
    return delivery.deliverer, list(delivery.services)


__all__ = ["GraphDelivery", "build_graph_delivery", "build_graph_deliverer", "build_http_client", "tls_policy", "CachedTLSPolicy", "ConnectionsService"]
