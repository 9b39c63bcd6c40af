"""
Prometheus metrics with ``prometheus-client``, on a registry the composition root owns.

prometheus-client's default ``REGISTRY`` is module state shared by everything in the process
(two gateways in one test run would add to each other's counters), so L{GatewayMetrics} makes
its own ``CollectorRegistry``, puts a ``ProcessCollector`` on it, and is handed to the few
places that count things as they happen:

- intake (the SMTP listener factories): messages accepted, replies refused by class (4xx/5xx),
  policy refusals by policy, message sizes;
- the Graph client: request latency by operation and HTTP status;
- a delivery observer: queue delay from acceptance to delivery.

Everything that is a *state* rather than an event (queue size, sessions, token expiry, mailbox
pauses, the runner's totals) is read at scrape time by L{StatusCollector} from the same
L{IStatusSource} the status page reads, so the page and the metrics never disagree.  The queue
gauges need the spool read in a thread, so the scrape first fetches the L{QueueView} and then
exposes it through L{QueueCollector} for that one scrape (L{exposition}).

Metric names that existed before (``graphsmtp_delivered_total``, ``graphsmtp_queue_messages``,
``graphsmtp_smtp_sessions``, ``graphsmtp_tenant_ok``, ``graphsmtp_auth_*`` …) keep their names.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

GRAPH_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
QUEUE_DELAY_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 5 * 86400.0)
MESSAGE_SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 4e6, 1e7, 3.5e7, 1.5e8)
TOKEN_STATES = (TOKEN_OK, TOKEN_DEGRADED, TOKEN_NEEDS_ADMIN, TOKEN_UNKNOWN)


class GatewayMetrics:
    """
    The gateway's registry and its event metrics.  Create one per gateway in the composition
    root; pass ``registry`` (tests) to inspect it.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process:
            ProcessCollector(namespace="", registry=self.registry)
        self.smtp_accepted = Counter(
            "graphsmtp_smtp_messages_accepted", "Messages accepted (250 after DATA, stored durably), per listener.",
            ["listener"], registry=self.registry)
        self.smtp_refused = Counter(
            "graphsmtp_smtp_replies_refused", "SMTP replies refusing something, per listener and class (4xx, 5xx).",
            ["listener", "class"], registry=self.registry)
        self.policy_refusals = Counter(
            "graphsmtp_policy_refusals", "Refusals by a policy, per listener, policy and class (4xx, 5xx).",
            ["listener", "policy", "class"], registry=self.registry)
        self.message_size = Histogram(
            "graphsmtp_message_size_bytes", "Size of accepted messages in bytes.", ["listener"],
            buckets=MESSAGE_SIZE_BUCKETS, registry=self.registry)
        self.graph_latency = Histogram(
            "graphsmtp_graph_request_duration_seconds",
            "Microsoft Graph request latency by operation and HTTP status (\"error\" when no answer).",
            ["operation", "status"], buckets=GRAPH_LATENCY_BUCKETS, registry=self.registry)
        self.queue_delay = Histogram(
            "graphsmtp_queue_delay_seconds", "Time from acceptance to delivery of delivered messages.",
            buckets=QUEUE_DELAY_BUCKETS, registry=self.registry)
        #: Per listener: its series of smtp_accepted and message_size (L{message_accepted}).
        self._accepted_series: dict[str, tuple[Any, Any]] = {}

    # -- hooks (called where things happen) ------------------------------------------------

    def message_accepted(self, listener: str, size: int) -> None:
        # A listener's two series are looked up once: labels() validates and locks on every
        # call, three times the cost of counting, once per accepted message (issue 13).
        series = self._accepted_series.get(listener)
        if series is None:
            series = self._accepted_series[listener] = (self.smtp_accepted.labels(listener),
                                                        self.message_size.labels(listener))
        series[0].inc()
        series[1].observe(size)

    def reply_refused(self, listener: str, code: int) -> None:
        self.smtp_refused.labels(listener, reply_class(code)).inc()

    def policy_refused(self, listener: str, policy: str, code: Optional[int]) -> None:
        self.policy_refusals.labels(listener, policy, reply_class(code or 550)).inc()

    def graph_request(self, method: str, url: str, status: Any, seconds: float) -> None:
        self.graph_latency.labels(graph_operation(method, url), str(status)).observe(seconds)

    def delivered_after(self, seconds: float) -> None:
        self.queue_delay.observe(seconds)

    def in_use_changed(self, listener: str) -> None:
        """A listener's open sessions or transactions changed: read at scrape time here."""

    def intake_for(self, listener: str) -> "IntakeCounters":
        return IntakeCounters(self, listener)


class IntakeCounters:
    """What one SMTP listener's factory calls: bound to its listener name."""

    def __init__(self, metrics: GatewayMetrics, listener: str) -> None:
        self._metrics = metrics
        self.listener = listener

    def message_accepted(self, size: int) -> None:
        self._metrics.message_accepted(self.listener, size)

    def reply_refused(self, code: int) -> None:
        self._metrics.reply_refused(self.listener, code)

    def in_use_changed(self) -> None:
        self._metrics.in_use_changed(self.listener)


def reply_class(code: int) -> str:
    return f"{int(code) // 100}xx"


def graph_operation(method: str, url: str) -> str:
    """
    A bounded operation name for a Graph request (never a mailbox or a message id, which would
    make one time series per message): ``sendMail``, ``create_draft``, ``patch_message``,
    ``add_attachment``, ``create_upload_session``, ``send_draft``, ``delete_message``,
    ``upload_chunk`` or ``other``.
    """
    method = method.upper()
    path = urlsplit(url).path.rstrip("/")
    parts = path.split("/")
    if "/users/" not in path:
        return "upload_chunk" if method == "PUT" else "other"
    last = parts[-1] if parts else ""
    if last == "sendMail":
        return "sendMail"
    if last == "createUploadSession":
        return "create_upload_session"
    if last == "attachments":
        return "add_attachment"
    if last == "send":
        return "send_draft"
    if last == "messages" and method == "POST":
        return "create_draft"
    if len(parts) >= 2 and parts[-2] == "messages":
        return {"PATCH": "patch_message", "DELETE": "delete_message"}.get(method, "other")
    return "other"


class StatusCollector(Collector):
    """Gauges and totals read from an L{IStatusSource} at every scrape."""

    def __init__(self, source: IStatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        source = self._source
        info = source.gateway()
        yield from _gateway_metrics(info)
        yield from _total_metrics(source.totals())
        yield from _listener_metrics(source.listeners())
        yield from _tenant_metrics(source.tenants())
        yield from _mailbox_metrics(source.mailboxes(), info.now)
        cluster = source.cluster()
        if cluster is not None:
            yield from _cluster_metrics(cluster)
        yield from _auth_metrics(source.auth())


def _gateway_metrics(info: GatewayInfo) -> Iterator[Metric]:
    build = GaugeMetricFamily("graphsmtp_build_info", "The running graphsmtp version.", labels=["version"])
    build.add_metric([info.version], 1)
    yield build
    yield GaugeMetricFamily("graphsmtp_start_time_seconds", "When the gateway started (POSIX time).",
                            value=info.started_at)


def _total_metrics(totals: DeliveryTotals) -> Iterator[Metric]:
    yield GaugeMetricFamily("graphsmtp_queue_messages", "Messages waiting in the spool or being delivered.",
                            value=totals.queued)
    yield GaugeMetricFamily("graphsmtp_deliveries_in_flight", "Deliveries currently in progress.",
                            value=totals.in_flight)
    for name, text, value in (
        ("graphsmtp_delivered", "Messages delivered.", totals.delivered),
        ("graphsmtp_deferred", "Transient delivery failures.", totals.deferred),
        ("graphsmtp_failed", "Messages that failed permanently or expired.", totals.failed),
        ("graphsmtp_possibly_delivered",
         "Ambiguous attempts that may have been delivered (retries may duplicate).", totals.possibly_delivered),
    ):
        yield CounterMetricFamily(name, text, value=value)


def _listener_metrics(listeners: Iterable[ListenerStatus]) -> Iterator[Metric]:
    sessions = GaugeMetricFamily("graphsmtp_smtp_sessions", "Open SMTP sessions per listener.", labels=["listener"])
    up = GaugeMetricFamily("graphsmtp_listener_up", "1 while the listener accepts connections.", labels=["listener"])
    for listener in listeners:
        sessions.add_metric([listener.name], listener.sessions)
        up.add_metric([listener.name], 1 if listener.state == "listening" else 0)
    yield sessions
    yield up


def _tenant_metrics(tenants: Iterable[TenantStatus]) -> Iterator[Metric]:
    ok = GaugeMetricFamily("graphsmtp_tenant_ok", "1 when the tenant gets Graph tokens (or has not been tried), "
                           "0 when degraded or an admin must act.", labels=["tenant", "state"])
    # The states under their /healthz spelling, so alerts and /healthz read alike.
    health_state = GaugeMetricFamily("graphsmtp_tenant_state",
                                     "1 for the state each tenant is in (ok, degraded, needs-admin, unknown).",
                                     labels=["tenant", "state"])
    expiry = GaugeMetricFamily("graphsmtp_tenant_token_expiry_timestamp_seconds",
                               "When the tenant's current access token expires (POSIX time).", labels=["tenant"])
    for tenant in tenants:
        ok.add_metric([tenant.label, tenant.state.replace(" ", "-")],
                      1 if tenant.state in (TOKEN_OK, TOKEN_UNKNOWN) else 0)
        for name in TOKEN_STATES:
            health_state.add_metric([tenant.label, name.replace(" ", "-")], 1 if tenant.state == name else 0)
        if tenant.token_expires_at:
            expiry.add_metric([tenant.label], tenant.token_expires_at)
    yield ok
    yield health_state
    yield expiry


def _mailbox_metrics(mailboxes: Iterable[MailboxPacing], now: float) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily("graphsmtp_mailbox_in_flight", "Graph deliveries in flight per sending mailbox.",
                                  labels=["mailbox"])
    paused = GaugeMetricFamily("graphsmtp_mailbox_paused", "1 while a sending mailbox is paused (throttled).",
                               labels=["mailbox"])
    for mailbox in mailboxes:
        in_flight.add_metric([mailbox.mailbox], mailbox.in_flight)
        paused.add_metric([mailbox.mailbox], 1 if mailbox.paused_until > now else 0)
    yield in_flight
    yield paused


def _cluster_metrics(cluster: Mapping[str, Any]) -> Iterator[Metric]:
    state = GaugeMetricFamily("graphsmtp_cluster_state",
                              "1 for this node's cluster state (ok, degraded: Redis away, each node "
                              "delivers with its share of the limits; rejoining).", labels=["node", "state"])
    for name in ("ok", "degraded", "rejoining"):
        state.add_metric([cluster["node"], name], 1 if cluster["state"] == name else 0)
    yield state
    yield CounterMetricFamily("graphsmtp_cluster_degraded", "Times this node lost the cluster's Redis.",
                              value=cluster["degraded_count"])


def _auth_metrics(counters: Mapping[str, Any]) -> Iterator[Metric]:
    for key, value in sorted(counters.items()):
        text = f"SMTP AUTH {key.replace('_', ' ')}."
        if key.endswith("_total"):
            yield CounterMetricFamily(f"graphsmtp_auth_{key[:-len('_total')]}", text, value=value)
        else:
            yield GaugeMetricFamily(f"graphsmtp_auth_{key}", text, value=value)


class QueueCollector(Collector):
    """The spool's state for one scrape, from a L{QueueView} read just before."""

    def __init__(self, view: QueueView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("graphsmtp_queue_state_messages",
                                     "Messages in the spool by state (active, deferred, waiting, failed).",
                                     labels=["state"])
        for name, count in sorted(self._view.counts.items()):
            by_state.add_metric([name], count)
        yield by_state
        yield GaugeMetricFamily("graphsmtp_queue_oldest_message_age_seconds",
                                "Age of the oldest queued message (0 when the queue is empty).",
                                value=self._view.oldest_age or 0.0)


class _ScrapeCollectors:
    """What one scrape exposes: the registry plus collectors that only live for this scrape."""

    def __init__(self, registry: CollectorRegistry, extra: Iterable[Collector]) -> None:
        self._registry = registry
        self._extra = tuple(extra)

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        for collector in self._extra:
            yield from collector.collect()


def exposition(registry: CollectorRegistry, view: Optional[QueueView] = None) -> bytes:
    """The text exposition of ``registry`` (and of ``view``'s queue gauges, when given)."""
    extra = [QueueCollector(view)] if view is not None else []
    return generate_latest(_ScrapeCollectors(registry, extra))


__all__ = [
    "GatewayMetrics", "IntakeCounters", "StatusCollector", "QueueCollector", "exposition", "graph_operation",
    "reply_class", "CONTENT_TYPE",
]
