"""
L{DeliveryHealth}: the one L{IHealthSource}, built by the composition root from what the
deliverer it chose offers.

The root knows which deliverer it built, so it hands the status endpoint the right views (the
Graph tenant monitor's ``health``, the ``[cluster]`` admission's ``status``, the mailbox
throttles) as plain callables; this module imports nothing from delivery at run time (only its
value types, for the annotations), and the status code never asks a deliverer what it happens
to have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Optional

import attrs
from zope.interface import implementer

from gateway.status.interfaces import IHealthSource

if TYPE_CHECKING:
    from gateway.delivery.graph.scheduler import MailboxThrottles
    from gateway.delivery.graph.tenant_health import TenantStatus as TenantHealthReport


def _no_tenants() -> "tuple[TenantHealthReport, ...]":
    return ()


@implementer(IHealthSource)
@attrs.frozen
class DeliveryHealth:
    """
    ``tenant_view()`` returns the per-tenant health values (none: a deliverer without
    tenants, such as the capture outbox); ``cluster_view()`` the ``[cluster]`` admission's
    state (None: this gateway paces alone); ``pause_view(key)`` why a mailbox is paused.
    """

    tenant_view: "Callable[[], Iterable[TenantHealthReport]]" = _no_tenants
    cluster_view: Optional[Callable[[], dict[str, Any]]] = None
    pause_view: Optional[Callable[[Hashable], str]] = None

    def tenants(self) -> "tuple[TenantHealthReport, ...]":
        return tuple(self.tenant_view())

    def cluster(self) -> Optional[dict[str, Any]]:
        return self.cluster_view() if self.cluster_view is not None else None

    def pause_reason(self, mailbox_key: Hashable) -> str:
        return self.pause_view(mailbox_key) if self.pause_view is not None else ""


def throttle_pause_reason(throttles: "MailboxThrottles") -> Callable[[Hashable], str]:
    """``pause_view`` for a deliverer's mailbox throttles: the reason while a pause lasts."""

    def pause_reason(key: Hashable) -> str:
        throttle = throttles.state(key)
        return throttle.pause_reason if throttle is not None and throttle.paused_until > 0 else ""

    return pause_reason


__all__ = ["DeliveryHealth", "throttle_pause_reason"]
