"""
L{ComponentsStatusSource}: the one adapter that knows where each status fact lives today.

The page and the metrics read an L{IStatusSource}; this class answers from the wired
components — the listener factories and services, the queue runner and its mailbox queues,
the delivery side's L{IHealthSource} (tenants, ``[cluster]``, mailbox pauses; handed over by
the composition root), the AUTH throttle, the recent-deliveries recorder and the spool.

Tenant health is translated by L{tenant_status}, the single place that maps the health values
an L{IHealthSource} lists onto ``ok / degraded / needs admin``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from gateway.status.interfaces import (
    TOKEN_DEGRADED,
    TOKEN_NEEDS_ADMIN,
    TOKEN_OK,
    TOKEN_UNKNOWN,
    DeliveryTotals,
    GatewayInfo,
    IStatusSource,
    ListenerStatus,
    MailboxPacing,
    QueueView,
    TenantStatus,
)
from gateway.status.queueview import scan_queue

#: How the deliverer's tenant states read for an admin.
_STATE_NAMES = {
    "ok": TOKEN_OK,
    "unreachable": TOKEN_DEGRADED,
    "degraded": TOKEN_DEGRADED,
    "config-error": TOKEN_NEEDS_ADMIN,
    "needs admin": TOKEN_NEEDS_ADMIN,
    "needs-admin": TOKEN_NEEDS_ADMIN,
    "unknown": TOKEN_UNKNOWN,
}

_ACTIONS = {
    TOKEN_DEGRADED: "Check that the gateway reaches login.microsoftonline.com (DNS, proxy, firewall); "
                    "deliveries are retried meanwhile.",
    TOKEN_NEEDS_ADMIN: "Fix the app registration in Entra ID: client secret or certificate, tenant id, "
                       "and admin consent for Mail.Send; deliveries for this tenant are paused and retried.",
}


def tenant_status(health: Any) -> TenantStatus:
    """
    An admin's view of one tenant-health value.  Understands today's
    L{gateway.delivery.graph.deliverer.TenantHealth} (``state``, ``detail``, ``since``,
    ``paused_until``, ``token_expires_at``) and passes through richer fields when a health
    object offers them (``admin_action``, ``last_error``).
    """
    state = _STATE_NAMES.get(str(health.state), TOKEN_UNKNOWN)
    last_error = str(getattr(health, "last_error", None) or getattr(health, "detail", "") or "")
    action = str(getattr(health, "admin_action", None) or getattr(health, "action", None) or (_ACTIONS.get(state, "") if last_error or state != TOKEN_OK else ""))
    expires = getattr(health, "token_expires_at", None) or None
    return TenantStatus(
        label=str(health.label),
        state=state,
        since=float(getattr(health, "since", 0.0) or 0.0),
        token_expires_at=float(expires) if expires else None,
        last_error=last_error if state != TOKEN_OK else "",
        admin_action=action if state != TOKEN_OK else "",
        paused_until=float(getattr(health, "paused_until", 0.0) or 0.0),
    )


def _listener_state(service: Any) -> str:
    if not service.running:
        return "stopped"
    return "listening" if getattr(service, "port", None) is not None else "starting"


@implementer(IStatusSource)
class ComponentsStatusSource:
    """
    Answers from ``components`` (L{gateway.wiring.Components}).  ``blocking(f, *args)`` runs
    the spool scan off the reactor thread and returns a Deferred; ``recent`` is a
    L{gateway.status.recent.RecentDeliveries} (or None).  Concurrent queue requests share one
    scan, and a scan is reused for ``queue_cache`` seconds, so a page reload and a Prometheus
    scrape arriving together cost one read of the spool.
    """

    def __init__(self, components: Any, clock: Any, hostname: str, version: str, started_at: float,
                 blocking: Callable[..., Deferred], recent: Any = None, scan_limit: int = 2000,
                 queue_cache: float = 5.0) -> None:
        self._components = components
        self._clock = clock
        self._hostname = hostname
        self._version = version
        self._started_at = started_at
        self._blocking = blocking
        self._recent = recent
        self._scan_limit = scan_limit
        self._scanning: Optional[list] = None
        self._queue_cache = queue_cache
        self._cached: Optional[tuple[float, QueueView]] = None

    def gateway(self) -> GatewayInfo:
        return GatewayInfo(self._version, self._hostname, self._started_at, self._clock.seconds())

    def listeners(self) -> tuple[ListenerStatus, ...]:
        return tuple(
            ListenerStatus(
                name=part.config.name, endpoint=part.config.endpoint, tls=part.config.tls, auth=part.config.auth,
                sessions=len(part.factory.sessions), transactions=part.factory.in_flight,
                state=_listener_state(part.service),
            )
            for part in self._components.listeners
        )

    def tenants(self) -> tuple[TenantStatus, ...]:
        return tuple(tenant_status(h) for h in self._components.health.tenants())

    def mailboxes(self) -> tuple[MailboxPacing, ...]:
        queues = getattr(self._components.runner, "mailboxes", None)
        if queues is None:
            return ()
        health = self._components.health
        rows = []
        for key, in_flight, paused_until, next_slot, _waiting in queues.snapshot(self._clock.seconds()):
            reason = health.pause_reason(key)
            mailbox = getattr(key, "mailbox", key)
            rows.append(MailboxPacing(str(mailbox), in_flight, paused_until, reason, next_slot))
        return tuple(sorted(rows, key=lambda m: m.mailbox))

    def cluster(self) -> Optional[dict]:
        """``[cluster]`` state (name, node, state, since, detail, degraded_count), or None."""
        return self._components.health.cluster()

    def totals(self) -> DeliveryTotals:
        runner = self._components.runner
        stats = runner.stats
        return DeliveryTotals(stats.delivered, stats.deferred, stats.failed, stats.possibly_delivered,
                              runner.queued, runner.in_flight)

    def auth(self) -> dict:
        auth = self._components.auth
        return dict(auth.stats()) if auth is not None else {}

    def recent(self) -> tuple:
        return self._recent.snapshot() if self._recent is not None else ()

    def queue(self) -> Deferred:
        now = self._clock.seconds()
        if self._cached is not None and 0 <= now - self._cached[0] < self._queue_cache:
            return succeed(self._cached[1])
        if self._scanning is not None:
            waiter: Deferred = Deferred()
            self._scanning.append(waiter)
            return waiter
        disk = getattr(self._components.spool, "disk", None)
        if disk is None:
            return succeed(_empty_view(self.totals()))
        self._scanning = []
        in_flight = self._components.runner.in_flight_ids()
        d = self._blocking(scan_queue, disk, self._clock.seconds(), in_flight, self._scan_limit)

        def share(result: Any) -> Any:
            self._cached = (self._clock.seconds(), result)
            waiters, self._scanning = self._scanning or [], None
            for waiter in waiters:
                waiter.callback(result)
            return result

        def share_failure(failure: Any) -> Any:
            waiters, self._scanning = self._scanning or [], None
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        return d.addCallbacks(share, share_failure)


def _empty_view(totals: DeliveryTotals) -> QueueView:
    from gateway.status.queueview import BUCKET_LABELS

    return QueueView(counts={"active": totals.in_flight, "deferred": 0,
                             "waiting": max(0, totals.queued - totals.in_flight), "failed": 0},
                     oldest_age=None, bucket_labels=BUCKET_LABELS, by_mailbox=(), by_domain=(),
                     deferral_reasons=(), failed=(), queued=totals.queued, examined=0)


__all__ = ["ComponentsStatusSource", "tenant_status"]
