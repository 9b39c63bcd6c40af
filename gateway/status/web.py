"""
The HTTP status endpoint: what a monitoring system and an admin need to know, and nothing
more — no addresses, no logins, no secrets.

- ``GET /healthz``: JSON summary; 200 when the gateway can deliver, 503 when an admin must act
  (a tenant's credentials are refused, so mail is piling up in the queue).
- ``GET /metrics``: Prometheus text format counters and gauges.

It reads live objects (the queue runner, the deliverer, the AUTH throttle, the listener
factories) on each request; it never blocks and never touches the disk.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from twisted.web.resource import Resource

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def snapshot(components: Any, clock: Any) -> dict[str, Any]:
    """A JSON-able picture of the gateway's state right now."""
    runner = components.runner
    stats = runner.stats
    health_of = getattr(_innermost(components.deliverer), "health", None)
    tenants = [
        {"tenant": t.label, "state": t.state, "detail": t.detail, "since": t.since,
         "paused_until": getattr(t, "paused_until", 0.0)}
        for t in (health_of() if health_of else ())
    ]
    needs_admin = [t for t in tenants if t["state"] == "config-error"]
    listeners_down = [part.config.name for part in components.listeners if not _listening(part)]
    return {
        "status": "degraded" if needs_admin or listeners_down else "ok",
        "time": clock.seconds(),
        "queue": {
            "queued": runner.queued,
            "in_flight": runner.in_flight,
            "delivered_total": stats.delivered,
            "deferred_total": stats.deferred,
            "failed_total": stats.failed,
            "possibly_delivered_total": stats.possibly_delivered,
        },
        "delivery": {"deliverer": type(_innermost(components.deliverer)).__name__, "tenants": tenants},
        "listeners": [
            {"name": part.config.name, "tls": part.config.tls, "auth": part.config.auth,
             "sessions": len(part.factory.sessions), "transactions_in_flight": part.factory.in_flight,
             "listening": part.config.name not in listeners_down}
            for part in components.listeners
        ],
        "auth": components.auth.stats() if components.auth is not None else {},
    }


def _listening(part: Any) -> bool:
    """Whether the listener's port is open now (a port lost after start-up makes /healthz 503)."""
    port = getattr(part.service, "port", None)
    return port is not None and bool(getattr(port, "connected", True))


def _innermost(deliverer: Any) -> Any:
    return getattr(deliverer, "inner", deliverer)


def prometheus(state: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, Any]]) -> None:
        lines.append(f"# HELP graphsmtp_{name} {help_text}")
        lines.append(f"# TYPE graphsmtp_{name} {kind}")
        for labels, value in samples:
            lines.append(f"graphsmtp_{name}{labels} {value}")

    q = state["queue"]
    metric("queue_messages", "gauge", "Messages waiting in the spool or being delivered.", [("", q["queued"])])
    metric("deliveries_in_flight", "gauge", "Deliveries currently in progress.", [("", q["in_flight"])])
    for key, text in (("delivered", "Messages delivered."), ("deferred", "Transient delivery failures."),
                      ("failed", "Messages that failed permanently or expired."),
                      ("possibly_delivered", "Ambiguous attempts that may have been delivered (retries may duplicate).")):
        metric(f"{key}_total", "counter", text, [("", q[f"{key}_total"])])
    metric("smtp_sessions", "gauge", "Open SMTP sessions per listener.",
           [(f'{{listener="{l["name"]}"}}', l["sessions"]) for l in state["listeners"]])
    metric("tenant_ok", "gauge", "1 when the tenant's credentials work, 0 when an admin must act.",
           [(f'{{tenant="{t["tenant"]}",state="{t["state"]}"}}', 0 if t["state"] == "config-error" else 1)
            for t in state["delivery"]["tenants"]])
    for key, value in sorted(state["auth"].items()):
        kind = "counter" if key.endswith("_total") else "gauge"
        metric(f"auth_{key}", kind, f"SMTP AUTH {key.replace('_', ' ')}.", [("", value)])
    return "\n".join(lines) + "\n"


class _Page(Resource):
    isLeaf = True

    def __init__(self, components: Any, clock: Any) -> None:
        super().__init__()
        self.components = components
        self.clock = clock


class HealthPage(_Page):
    def render_GET(self, request: Any) -> bytes:
        state = snapshot(self.components, self.clock)
        request.setResponseCode(200 if state["status"] == "ok" else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(state, indent=2, sort_keys=True).encode() + b"\n"


class MetricsPage(_Page):
    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", PROMETHEUS_TYPE)
        return prometheus(snapshot(self.components, self.clock)).encode()


def status_root(components: Any, clock: Any) -> Resource:
    root = Resource()
    root.putChild(b"healthz", HealthPage(components, clock))
    root.putChild(b"metrics", MetricsPage(components, clock))
    return root


def status_service(endpoint_description: str, components: Any, reactor: Any) -> Any:
    """The listening service for ``[status] endpoint``."""
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import serverFromString
    from twisted.web.server import Site

    site = Site(status_root(components, reactor), timeout=60)  # idle clients go after a minute
    site.noisy = False
    site.displayTracebacks = False
    service = StreamServerEndpointService(serverFromString(reactor, endpoint_description), site)
    service.setName("status")
    return service


__all__ = ["snapshot", "prometheus", "status_root", "status_service"]
