"""
Is each configured tenant able to get a Graph token right now?

Without this, a tenant's state was ``unknown`` until the first real message failed, and a
token endpoint that was down or answered 5xx left ``/healthz`` at 200.  The
L{TenantHealthMonitor} asks for a token for every configured tenant at start-up and again
shortly before the token it holds needs renewing (through L{TokenProviders}, so in the MSAL
thread pool, sharing MSAL's token cache and the single-flight with deliveries: a probe never
costs an extra token request while a fresh token is cached).  Each tenant is in one state:

- ``unknown``: the first probe has not finished yet;
- ``ok``: the last token request succeeded;
- ``degraded``: the token endpoint is unreachable or failing (network, 5xx, timeout) since a
  given time; mail stays queued and is retried;
- ``needs-admin``: Entra refused the credentials or the consent (AADSTS code + action), or
  Graph refused a freshly issued token; only an admin can fix it.

A failed probe is retried after ``retry`` seconds, doubling up to ``retry_max`` (``needs-admin``)
or ``min(retry_max, DEGRADED_RETRY_MAX)`` (``degraded``, so recovery shows within minutes).  Every
state change is logged once (not every probe).  Deliveries' token requests feed the same state
(L{MonitoredTokens}), and a tenant the deliverer paused because Graph refused its tokens reads
``needs-admin`` too.

The status endpoint only reads L{TenantHealthMonitor.health}; the logic lives here.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Iterable, Optional, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.delivery.graph.credentials import TenantCredentials
from gateway.delivery.graph.entra_errors import explain
from gateway.delivery.graph.token import EXPIRY_MARGIN, AccessToken, TokenError, TokenProviders

UNKNOWN = "unknown"
OK = "ok"
DEGRADED = "degraded"
NEEDS_ADMIN = "needs-admin"

#: Probe again this long after the token needs renewing by the gateway's margin, so MSAL (which
#: keeps a token until 5 minutes before expiry) really asks Entra.
RENEWAL_SLACK = 10.0
#: Never probe one tenant more often than this while it is ok (a very short-lived token).
MINIMUM_INTERVAL = 60.0
#: A degraded tenant is retried at least this often, so recovery shows within minutes.
DEGRADED_RETRY_MAX = 300.0


def iso_utc(seconds: float) -> str:
    """``2026-11-29T23:10:00Z``: how the health report and the log show a time."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class TenantStatus:
    """
    One tenant's state for ``/healthz``, ``/metrics`` and the log.  ``detail`` is one clean line
    (no secret: built from Entra's error code and first sentence); ``action`` what an admin does;
    ``since`` when the state began; ``checked_at`` the last probe; ``next_check`` the next one.
    """

    label: str
    state: str
    detail: str = ""
    action: str = ""
    code: str = ""
    since: float = 0.0
    checked_at: float = 0.0
    next_check: float = 0.0
    paused_until: float = 0.0
    token_expires_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == OK

    def describe(self) -> str:
        """``ok`` / ``degraded (token endpoint unreachable, since …)`` / ``needs admin (…)``."""
        if self.state == OK:
            return "ok"
        if self.state == UNKNOWN:
            return "unknown (first token request pending)"
        words = "needs admin" if self.state == NEEDS_ADMIN else "degraded"
        return f"{words} ({self.detail}, since {iso_utc(self.since)})"


@attrs.define(eq=False)
class _Watch:
    """One configured tenant: its current L{TenantStatus} plus the probing machinery."""

    credentials: TenantCredentials
    status: TenantStatus
    failures: int = 0
    timer: Optional[IDelayedCall] = None
    probing: Optional[Deferred] = None


class TenantHealthMonitor(Service):
    """
    Probes each of ``tenants`` through ``tokens`` (a L{TokenProviders}) on ``clock``.
    ``graph_view``, when given, returns the deliverer's own tenant view (L{GraphDeliverer.health})
    so a tenant paused because Graph refused its tokens reads ``needs-admin``.
    """

    log = Logger()

    def __init__(self, tokens: TokenProviders, tenants: Sequence[TenantCredentials], clock: IReactorTime, *,
                 retry: float = 60.0, retry_max: float = 3600.0,
                 graph_view: Optional[Callable[[], Iterable[Any]]] = None) -> None:
        self.tokens = tokens
        self.clock = clock
        self.retry = retry
        self.retry_max = retry_max
        self.graph_view = graph_view
        self._watches: dict[tuple, _Watch] = {}
        for credentials in tenants:
            self._watches.setdefault(credentials.tenant_key, _Watch(credentials, TenantStatus(credentials.label, UNKNOWN, since=clock.seconds())))
        self.setName("tenant-health")

    # -- service -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for watch in self._watches.values():
            self._probe(watch)

    def stopService(self) -> Any:
        super().stopService()
        for watch in self._watches.values():
            if watch.timer is not None and watch.timer.active():
                watch.timer.cancel()
            watch.timer = None

    # -- public --------------------------------------------------------------------------

    def probe_all(self) -> Deferred:
        """Probe every tenant now (tests, SIGHUP); fires with L{health} once all answered."""
        from twisted.internet.defer import gatherResults

        waits = [self._probe(w) for w in self._watches.values()]
        return gatherResults(waits).addCallback(lambda _: self.health())

    def health(self) -> tuple[TenantStatus, ...]:
        """One L{TenantStatus} per configured tenant, in configuration order."""
        graph = {}
        if self.graph_view is not None:
            graph = {getattr(t, "label", None): t for t in self.graph_view()}
        result = []
        for watch in self._watches.values():
            status = watch.status
            seen = graph.get(watch.credentials.label)
            if seen is not None:
                status = self._merge(status, seen)
            result.append(status)
        return tuple(result)

    def observe(self, credentials: TenantCredentials, result: Any) -> None:
        """A token request's result (an L{AccessToken} or a L{TokenError}) from anywhere."""
        watch = self._watches.get(credentials.tenant_key)
        if watch is None:
            return  # a pass-through login's own tenant: not a configured one
        now = self.clock.seconds()
        watch.status = attrs.evolve(watch.status, checked_at=now)
        if isinstance(result, AccessToken):
            watch.status = attrs.evolve(watch.status, token_expires_at=float(result.expires_at))
            self._became(watch, OK, "", "", "", now)
            watch.failures = 0
            return
        if isinstance(result, TokenError):
            explanation = explain(result.code, result.description, transient=not result.is_config)
            state = NEEDS_ADMIN if result.is_config else DEGRADED
            self._became(watch, state, explanation.summary(), explanation.action, result.code, now)

    # -- probing -------------------------------------------------------------------------

    def _probe(self, watch: _Watch) -> Deferred:
        if watch.timer is not None and watch.timer.active():
            watch.timer.cancel()
        watch.timer = None
        if watch.probing is not None:
            return _follow(watch.probing)
        d = self.tokens.acquire(watch.credentials)
        watch.probing = d

        def done(result: Any) -> None:
            watch.probing = None
            if isinstance(result, Failure):
                error = result.value
                if not isinstance(error, TokenError):
                    error = TokenError("transient", "internal", type(error).__name__)
                self.observe(watch.credentials, error)
                watch.failures += 1
                cap = self.retry_max if watch.status.state == NEEDS_ADMIN else min(self.retry_max, DEGRADED_RETRY_MAX)
                delay = min(self.retry * 2 ** (watch.failures - 1), cap)
            else:
                self.observe(watch.credentials, result)
                delay = max(result.expires_at - EXPIRY_MARGIN + RENEWAL_SLACK - self.clock.seconds(), MINIMUM_INTERVAL)
            self._schedule(watch, delay)

        d.addBoth(done)
        return _follow(d)

    def _schedule(self, watch: _Watch, delay: float) -> None:
        if not self.running:
            return
        watch.status = attrs.evolve(watch.status, next_check=self.clock.seconds() + delay)
        watch.timer = self.clock.callLater(delay, self._probe, watch)

    # -- state ---------------------------------------------------------------------------

    def _became(self, watch: _Watch, state: str, detail: str, action: str, code: str, now: float) -> None:
        previous, previous_since = watch.status.state, watch.status.since
        watch.status = attrs.evolve(watch.status, detail=detail, action=action, code=code)
        if state == previous:
            return
        watch.status = attrs.evolve(watch.status, state=state, since=now)
        label = watch.credentials.label
        if state == OK:
            if previous == UNKNOWN:
                self.log.info("tenant {tenant}: ok (Graph token issued)", tenant=label, tenant_state=state)
            else:
                self.log.info("tenant {tenant}: ok again (Graph token issued) after being {previous} since {since}",
                              tenant=label, tenant_state=state, previous=previous.replace("-", " "),
                              since=iso_utc(previous_since))
        elif state == DEGRADED:
            self.log.warn("tenant {tenant}: degraded ({detail}, since {since}); mail stays queued and is retried",
                          tenant=label, tenant_state=state, detail=detail, since=iso_utc(now), code=code)
        else:
            self.log.critical("tenant {tenant}: NEEDS ADMIN ({detail}); {action}; mail stays queued",
                              tenant=label, tenant_state=state, detail=detail, action=action, code=code)

    @staticmethod
    def _merge(status: TenantStatus, seen: Any) -> TenantStatus:
        """
        Fold in the deliverer's view: Graph refusing fresh tokens pauses the tenant; Graph not
        answering at all (while tokens work) makes it degraded.
        """
        paused = float(getattr(seen, "paused_until", 0.0) or 0.0)
        trouble_since = float(getattr(seen, "graph_trouble_since", 0.0) or 0.0)
        if trouble_since and status.state == OK:
            detail = f"Graph not answering: {getattr(seen, 'graph_trouble', '') or 'no answer'}".rstrip(".")
            return attrs.evolve(status, state=DEGRADED, detail=detail, since=trouble_since, paused_until=paused,
                                action="check the network path to Microsoft Graph (proxy, firewall, DNS) and "
                                       "Microsoft 365 service health; mail stays queued and is retried")
        if getattr(seen, "state", None) == "config-error" and status.state != NEEDS_ADMIN:
            detail = str(getattr(seen, "detail", "") or "Graph refused the tenant's tokens").rstrip(".")
            return attrs.evolve(status, state=NEEDS_ADMIN, detail=detail, since=float(getattr(seen, "since", 0.0)),
                                action="check the app's Mail.Send application permission and admin consent",
                                paused_until=paused)
        return attrs.evolve(status, paused_until=paused)


def _follow(d: Deferred) -> Deferred:
    """A Deferred that fires (with None) when ``d`` does, without taking its result."""
    follower: Deferred = Deferred()

    def passthrough(result: object) -> object:
        follower.callback(None)
        return result

    d.addBoth(passthrough)
    return follower


@attrs.define(eq=False)
class MonitoredTokens:
    """
    L{TokenProviders} as the deliverer uses it, telling the monitor about every token request a
    delivery makes: the first real failure changes the tenant's state at once, not at the next probe.
    """

    tokens: TokenProviders
    monitor: TenantHealthMonitor

    def acquire(self, credentials: TenantCredentials) -> Deferred:
        d = self.tokens.acquire(credentials)

        def seen(result: Any) -> Any:
            self.monitor.observe(credentials, result.value if isinstance(result, Failure) else result)
            return result

        return d.addBoth(seen)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokens, name)


__all__ = ["TenantHealthMonitor", "TenantStatus", "MonitoredTokens", "UNKNOWN", "OK", "DEGRADED", "NEEDS_ADMIN",
           "iso_utc"]
