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

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.delivery.interfaces import MailboxKey
from gateway.smtp.listener import SMTPListenerService
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
    RecentDelivery,
    TenantStatus,
)
from gateway.status.queueview import scan_queue

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from gateway.delivery.graph.tenant_health import TenantStatus as TenantHealthReport
    from gateway.status.interfaces import StatusParts
    from gateway.status.recent import RecentDeliveries

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


def tenant_status(health: "TenantHealthReport") -> TenantStatus:
    """
    An admin's view of one L{gateway.delivery.graph.tenant_health.TenantStatus}: its ``detail``
    is the last error, its ``action`` what to do (else the generic advice for the state), and a
    token expiry of 0 (none issued yet) reads as unknown.
    """
    state = _STATE_NAMES.get(str(health.state), TOKEN_UNKNOWN)
    last_error = str(health.detail or "")
    action = str(health.action or (_ACTIONS.get(state, "") if last_error or state != TOKEN_OK else ""))
    expires = health.token_expires_at or None
    return TenantStatus(
        label=str(health.label),
        state=state,
        since=float(health.since or 0.0),
        token_expires_at=float(expires) if expires else None,
        last_error=last_error if state != TOKEN_OK else "",
        admin_action=action if state != TOKEN_OK else "",
        paused_until=float(health.paused_until or 0.0),
    )


def listener_port(service: object) -> "Optional[IListeningPort]":
    """The port an SMTP listener's service listens on, or None (not started, or not listening yet)."""
    return service.port if isinstance(service, SMTPListenerService) else None


def port_open(port: "IListeningPort") -> bool:
    """Whether ``port`` still listens: a file-descriptor port knows (it lost its socket); others are trusted."""
    return bool(port.connected) if isinstance(port, FileDescriptor) else True


def _listener_state(service: "SMTPListenerService") -> str:
    if not service.running:
        return "stopped"
    return "listening" if listener_port(service) is not None else "starting"


@implementer(IStatusSource)
class ComponentsStatusSource:
    """
    Answers from ``components`` (L{gateway.status.interfaces.StatusParts}).  ``blocking(f, *args)`` runs
    the spool scan off the reactor thread and returns a Deferred; ``recent`` is a
    L{gateway.status.recent.RecentDeliveries} (or None).  Concurrent queue requests share one
    scan, and a scan is reused for ``queue_cache`` seconds, so a page reload and a Prometheus
    scrape arriving together cost one read of the spool.
    """

    def __init__(self, components: "StatusParts", clock: IReactorTime, hostname: str, version: str, started_at: float,
                 blocking: Callable[..., Deferred], recent: "Optional[RecentDeliveries]" = None, scan_limit: int = 2000,
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
        workers = self._components.worker_intake  # sessions run by intake worker processes
        return tuple(
            ListenerStatus(
                name=part.config.name, endpoint=part.config.endpoint, tls=part.config.tls, auth=part.config.auth,
                sessions=len(part.factory.sessions) + workers.sessions(part.config.name),
                transactions=part.factory.in_flight + workers.transactions(part.config.name),
                state=_listener_state(part.service),
            )
            for part in self._components.listeners
        )

    def tenants(self) -> tuple[TenantStatus, ...]:
        return tuple(tenant_status(h) for h in self._components.health.tenants())

    def mailboxes(self) -> tuple[MailboxPacing, ...]:
        health = self._components.health
        rows = []
        for key, in_flight, paused_until, next_slot, _waiting in self._components.runner.mailboxes.snapshot(self._clock.seconds()):
            reason = health.pause_reason(key)
            mailbox = key.mailbox if isinstance(key, MailboxKey) else key
            rows.append(MailboxPacing(str(mailbox), in_flight, paused_until, reason, next_slot))
        return tuple(sorted(rows, key=lambda m: m.mailbox))

    def cluster(self) -> Optional[dict[str, Any]]:
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

    def recent(self) -> tuple[RecentDelivery, ...]:
        return self._recent.snapshot() if self._recent is not None else ()

    def queue(self) -> Deferred:
        now = self._clock.seconds()
        if self._cached is not None and 0 <= now - self._cached[0] < self._queue_cache:
            return succeed(self._cached[1])
        if self._scanning is not None:
            waiter: Deferred = Deferred()
            self._scanning.append(waiter)
            return waiter
        self._scanning = []
        in_flight = self._components.runner.in_flight_ids()
        d = self._blocking(scan_queue, self._components.spool.disk, self._clock.seconds(), in_flight, self._scan_limit)

        def share(result: QueueView) -> QueueView:
            self._cached = (self._clock.seconds(), result)
            waiters, self._scanning = self._scanning or [], None
            for waiter in waiters:
                waiter.callback(result)
            return result

        def share_failure(failure: Failure) -> Failure:
            waiters, self._scanning = self._scanning or [], None
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        return d.addCallbacks(share, share_failure)


__all__ = ["ComponentsStatusSource", "tenant_status", "listener_port", "port_open"]
