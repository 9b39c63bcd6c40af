"""
What the status page and the metrics read, as small read-only values behind one interface.

The page and the Prometheus collector never reach into the queue runner, the deliverer or the
listener factories themselves: they ask an L{IStatusSource}.  One adapter
(L{gateway.status.sources.ComponentsStatusSource}) knows where each fact lives today, so a
component that changes shape (a new tenant-health object, a new scheduler) means changing that
adapter only — and a test can hand the page a fake source.

Nothing here carries a secret: tenants are named by their configured label, tokens only by
their expiry time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Optional, Protocol, Sequence

import attrs
from zope.interface import Interface

if TYPE_CHECKING:
    # Status sits above delivery (ARCHITECTURE.md's layer table), so it may name delivery's
    # value types; imported for the annotations only, so a capture gateway loads no Graph code.
    from gateway.auth.build import Authentication
    from gateway.config.model import ListenerConfig
    from gateway.delivery.graph.tenant_health import TenantStatus as TenantHealthReport
    from gateway.delivery.interfaces import IDeliverer
    from gateway.queue.runner import QueueRunner
    from gateway.smtp.factory import GatewaySMTPFactory
    from gateway.spool.store import DirectorySpool
    from gateway.status.metrics import GatewayMetrics
    from gateway.status.recent import RecentDeliveries
    from gateway.status.worker_intake import WorkerIntake

#: The three token states an admin acts on, plus "unknown" before the first token request.
TOKEN_OK = "ok"
TOKEN_DEGRADED = "degraded"
TOKEN_NEEDS_ADMIN = "needs admin"
TOKEN_UNKNOWN = "unknown"


@attrs.frozen
class GatewayInfo:
    version: str
    hostname: str
    started_at: float
    now: float

    @property
    def uptime(self) -> float:
        return max(0.0, self.now - self.started_at)


@attrs.frozen
class ListenerStatus:
    """``state`` is ``listening``, ``starting`` or ``stopped``."""

    name: str
    endpoint: str
    tls: str
    auth: str
    sessions: int
    transactions: int
    state: str


@attrs.frozen
class TenantStatus:
    """
    One Graph tenant's credentials.  ``state`` is one of ``ok``, ``degraded`` (the login host
    cannot be reached; deliveries retry), ``needs admin`` (credentials or consent refused;
    deliveries paused) or ``unknown``.  ``admin_action`` says what to do about ``last_error``.
    """

    label: str
    state: str
    since: float = 0.0
    token_expires_at: Optional[float] = None
    last_error: str = ""
    admin_action: str = ""
    paused_until: float = 0.0


@attrs.frozen
class MailboxPacing:
    """A sending mailbox's admission state: requests in flight, pause, and the next free slot."""

    mailbox: str
    in_flight: int
    paused_until: float
    pause_reason: str
    next_slot: float


@attrs.frozen
class RecentDelivery:
    """One delivery outcome as the page lists it (newest first)."""

    at: float
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    mailbox: str
    status: str  # delivered / deferred / failed
    delay: float  # seconds from acceptance to this outcome
    detail: str = ""


@attrs.frozen
class ShapeRow:
    """One row of a qshape-like table: ``counts[i]`` messages in age bucket ``i``."""

    key: str
    total: int
    counts: tuple[int, ...]


@attrs.frozen
class FailedMessage:
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    reason: str
    received_at: float


@attrs.frozen
class QueueView:
    """
    The queue as the page shows it.  ``counts`` maps a state (``active``, ``deferred``,
    ``waiting``, ``failed``) to a number of messages; ``bucket_labels`` names the age columns
    of ``by_mailbox`` and ``by_domain``.  ``examined`` of ``queued`` records were read for the
    tables (the oldest first): a very large queue is summarised from its oldest part, and the
    records beyond that are counted as ``waiting``.
    """

    counts: dict
    oldest_age: Optional[float]
    bucket_labels: tuple[str, ...]
    by_mailbox: tuple[ShapeRow, ...]
    by_domain: tuple[ShapeRow, ...]
    deferral_reasons: tuple[tuple[str, int], ...]
    failed: tuple[FailedMessage, ...]
    queued: int
    examined: int


@attrs.frozen
class DeliveryTotals:
    """Counters since start, from the queue runner."""

    delivered: int
    deferred: int
    failed: int
    possibly_delivered: int
    queued: int
    in_flight: int


class IHealthSource(Interface):
    """
    The delivery side's health as ``/healthz``, the page and the metrics read it, handed to
    the status endpoint by the composition root (the status code never probes the deliverer
    for attributes).  Graph delivery provides per-tenant token health, ``[cluster]`` its shared
    admission state and each mailbox's pause reason; the capture outbox provides nothing.
    """

    def tenants() -> "tuple[TenantHealthReport, ...]":
        """
        One L{gateway.delivery.graph.tenant_health.TenantStatus} per Graph tenant (``label``,
        ``state``: ok, degraded, needs-admin, unknown; ``detail``, ``action``, ``since``,
        ``paused_until``, ``token_expires_at``).  Empty without Graph.
        """

    def cluster() -> "Optional[dict[str, Any]]":
        """``[cluster]`` state (name, node, state, since, detail, degraded_count), or None."""

    def pause_reason(mailbox_key: Hashable) -> str:
        """Why the sending mailbox the runner queues under ``mailbox_key`` is paused ("" when it is not)."""


class IStatusSource(Interface):
    """Read-only facts about the running gateway, for the status page and the metrics."""

    def gateway() -> GatewayInfo:
        """Version, host name, start time and the current time."""

    def listeners() -> "tuple[ListenerStatus, ...]":
        """Every configured SMTP listener."""

    def tenants() -> "tuple[TenantStatus, ...]":
        """Every Graph tenant the deliverer knows (empty with the capture deliverer)."""

    def mailboxes() -> "tuple[MailboxPacing, ...]":
        """Sending mailboxes with pacing state (busy, paused or recently used)."""

    def cluster() -> "Optional[dict[str, Any]]":
        """``[cluster]`` state (name, node, state, since, detail, degraded_count), or None alone."""

    def totals() -> DeliveryTotals:
        """Delivery counters and the runner's queue size."""

    def auth() -> dict:
        """AUTH throttle counters (no logins, no addresses); empty without AUTH."""

    def recent() -> "tuple[RecentDelivery, ...]":
        """The last delivery outcomes, newest first."""

    def queue():
        """Deferred firing with a L{QueueView} (reads the spool in a thread, never on the reactor)."""


class StatusListener(Protocol):
    """What the status endpoint reads of one SMTP listener (the root's ListenerParts has it)."""

    @property
    def config(self) -> "ListenerConfig": ...

    @property
    def factory(self) -> "GatewaySMTPFactory": ...

    @property
    def service(self) -> Any: ...


class StatusParts(Protocol):
    """
    The parts of a running gateway the status endpoint reads.  The composition root's
    C{Components} provides them; status names them here, below the root, so it never imports
    the root that builds it (ARCHITECTURE.md's layer table).
    """

    @property
    def spool(self) -> "DirectorySpool": ...

    @property
    def runner(self) -> "QueueRunner": ...

    @property
    def deliverer(self) -> "IDeliverer": ...

    @property
    def listeners(self) -> Sequence[StatusListener]: ...

    @property
    def auth(self) -> "Authentication": ...

    @property
    def health(self) -> "IHealthSource": ...

    @property
    def metrics(self) -> "GatewayMetrics": ...

    @property
    def recent(self) -> "RecentDeliveries": ...

    @property
    def worker_intake(self) -> "WorkerIntake": ...


__all__ = [
    "GatewayInfo", "ListenerStatus", "TenantStatus", "MailboxPacing", "RecentDelivery", "ShapeRow",
    "FailedMessage", "QueueView", "DeliveryTotals", "IStatusSource", "IHealthSource", "StatusParts", "StatusListener",
    "TOKEN_OK", "TOKEN_DEGRADED", "TOKEN_NEEDS_ADMIN", "TOKEN_UNKNOWN",
]
