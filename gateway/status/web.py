"""
The HTTP status endpoint: what a monitoring system and an admin need to know, and no secret.
``/healthz`` shows no address either; the page and the metrics do (senders, recipients,
mailboxes), which is why the endpoint belongs on loopback or behind a login.

- ``GET /healthz``: JSON summary; 200 when the gateway can deliver, 503 when it cannot: a tenant
  is ``degraded`` (token endpoint unreachable or failing) or ``needs-admin`` (credentials or
  consent refused), or a listener lost its port.  ``status`` says which; mail keeps being
  accepted and queued either way.
- ``GET /metrics``: prometheus-client exposition (L{gateway.status.metrics}).
- ``GET /``: the human status page (L{gateway.status.page}).

``/healthz`` reads live objects on each request and never touches the disk; ``/`` and
``/metrics`` read the spool's records in the status thread pool, never on the reactor.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

import attrs
from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.status.interfaces import IStatusSource, QueueView
from gateway.status.metrics import GatewayMetrics
from gateway.threads import ThreadPoolService

if TYPE_CHECKING:
    from gateway.status.interfaces import StatusListener, StatusParts

_log = Logger(namespace="gateway.status.web")


class _QuietSite(Site):
    """
    Access lines at debug level: Twisted logs one info line per request, so a Prometheus
    scraping /metrics every 15 s (and a load balancer polling /healthz) wrote thousands of
    lines a day between the message lines that matter.
    """

    def log(self, request: HTTPRequest) -> None:
        _log.debug("status request: {line}", line=self._logFormatter(self._logDateTime, request))


def snapshot(components: "StatusParts", clock: IReactorTime) -> dict[str, Any]:
    """A JSON-able picture of the gateway's state right now."""
    runner = components.runner
    stats = runner.stats
    tenants = [
        {"tenant": t.label, "state": t.state, "detail": t.detail, "since": t.since,
         "paused_until": t.paused_until, "action": t.action}
        for t in components.health.tenants()
    ]
    listeners_down = [part.config.name for part in components.listeners if not _listening(part)]
    status = overall_status(tenants)
    return {
        "status": "degraded" if status == "ok" and listeners_down else status,
        "time": clock.seconds(),
        "queue": {
            "queued": runner.queued,
            "in_flight": runner.in_flight,
            "delivered_total": stats.delivered,
            "deferred_total": stats.deferred,
            "failed_total": stats.failed,
            "possibly_delivered_total": stats.possibly_delivered,
        },
        "delivery": {"deliverer": type(components.deliverer).__name__, "tenants": tenants},
        # [cluster]: ok / degraded (Redis away: this node delivers with its share of the limits)
        # / rejoining.  Informational only: it never makes /healthz 503, or a load balancer
        # would take every gateway out when Redis goes down.
        "cluster": components.health.cluster(),
        "listeners": [
            {"name": part.config.name, "tls": part.config.tls, "auth": part.config.auth,
             "sessions": len(part.factory.sessions), "transactions_in_flight": part.factory.in_flight,
             "listening": part.config.name not in listeners_down}
            for part in components.listeners
        ],
        "auth": components.auth.stats() if components.auth is not None else {},
    }


def _listening(part: "StatusListener") -> bool:
    """Whether the listener's port is open now (a port lost after start-up makes /healthz 503)."""
    from gateway.status.sources import listener_port, port_open

    port = listener_port(part.service)
    return port is not None and port_open(port)


def overall_status(tenants: list) -> str:
    """``needs-admin`` beats ``degraded`` beats ``ok``; anything but ``ok`` answers 503."""
    states = {t["state"] for t in tenants}
    if states & {"needs-admin", "config-error"}:
        return "needs-admin"
    if states & {"degraded", "unreachable"}:
        return "degraded"
    return "ok"


class _Page(Resource):
    isLeaf = True

    def __init__(self, components: "StatusParts", clock: IReactorTime) -> None:
        super().__init__()
        self.components = components
        self.clock = clock


class HealthPage(_Page):
    def render_GET(self, request: Request) -> bytes:
        state = snapshot(self.components, self.clock)
        request.setResponseCode(200 if state["status"] == "ok" else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(state, indent=2, sort_keys=True).encode() + b"\n"


class MetricsPage(Resource):
    """``GET /metrics``: prometheus-client's text exposition of the gateway's own registry."""

    isLeaf = True
    log = Logger()

    def __init__(self, source: IStatusSource, registry: CollectorRegistry) -> None:
        super().__init__()
        self.source = source
        self.registry = registry

    def render_GET(self, request: Request) -> int:
        from gateway.status.metrics import CONTENT_TYPE, exposition

        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))

        def write(view: Optional[QueueView]) -> None:
            request.write(exposition(self.registry, view))
            request.finish()

        def without_queue(failure: Failure) -> None:
            self.log.warn("metrics: the spool could not be read: {error}", error=failure.getErrorMessage())
            write(None)

        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        d = self.source.queue().addCallbacks(write, without_queue)
        d.addErrback(lambda f: None if finished else self.log.failure("metrics scrape failed", f))
        return NOT_DONE_YET



def status_root(components: "StatusParts", clock: IReactorTime, source: IStatusSource, metrics: GatewayMetrics, refresh: int = 0) -> Resource:
    """
    ``/`` (the human page), ``/healthz`` (JSON) and ``/metrics`` (Prometheus).  ``source`` is
    the L{IStatusSource} the page and the metrics read; ``metrics`` the gateway's
    L{GatewayMetrics} (its registry is what ``/metrics`` serves).
    """
    from gateway.status.metrics import StatusCollector
    from gateway.status.page import StatusPageResource

    metrics.registry.register(StatusCollector(source))
    root = Resource()
    root.putChild(b"", StatusPageResource(source, refresh))
    root.putChild(b"healthz", HealthPage(components, clock))
    root.putChild(b"metrics", MetricsPage(source, metrics.registry))
    return root


def _version() -> str:
    from gateway import __version__

    return __version__


@attrs.define
class StatusServices:
    """The status endpoint's listening service and the thread pool its spool reads and logins use."""

    web: StreamServerEndpointService
    pool: ThreadPoolService
    source: IStatusSource


def status_service(status: Any, components: "StatusParts", reactor: Any, hostname: str = "localhost") -> StatusServices:
    """
    The services for ``[status]`` (a L{gateway.config.status.StatusConfig}): start ``pool``
    before ``web`` and stop it after.
    """
    from functools import partial

    from twisted.internet.endpoints import serverFromString
    from twisted.internet.threads import deferToThreadPool

    from gateway.status.sources import ComponentsStatusSource

    pool = ThreadPoolService("graphsmtp-status", 1, 2)
    source = ComponentsStatusSource(
        components, reactor, hostname, _version(), reactor.seconds(), partial(deferToThreadPool, reactor, pool.pool),
        recent=components.recent, scan_limit=status.queue_scan_limit)
    resource: IResource = status_root(components, reactor, source, components.metrics, status.refresh)
    if status.login:
        from gateway.status.guard import guarded

        resource = guarded(resource, status.users_file, reactor, pool.pool)
    else:
        from gateway.config.status import bind_facts

        if not bind_facts(status.endpoint).local:
            _log.warn("the status endpoint {endpoint} is reachable beyond this machine without a login; it shows "
                      "sender and recipient addresses (set [status] login = true, over an ssl: endpoint)",
                      endpoint=status.endpoint)
    site = _QuietSite(resource, timeout=60)  # idle clients go after a minute
    site.noisy = False
    site.displayTracebacks = False
    service = StreamServerEndpointService(serverFromString(reactor, status.endpoint), site)
    service.setName("status")
    return StatusServices(service, pool, source)


__all__ = ["snapshot", "status_root", "status_service", "StatusServices", "MetricsPage", "HealthPage"]
