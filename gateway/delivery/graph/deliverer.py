"""
The Graph deliverer: one spool entry in, one outcome out.

For each message: find its credentials (default tenant or a pass-through login), read the
header section (in a thread) and decide the sending mailbox and the recipient path
(L{gateway.delivery.graph.mime}), get a token (L{TokenProviders}), then send:

- **one request** (``POST /users/{m}/sendMail``, MIME, ``Mail.Send``) when the base64 message
  fits ``max_request_size`` and no draft is needed;
- **a draft** (``POST /users/{m}/messages`` from MIME, then ``PATCH`` for hidden recipients,
  attachments cut out of big messages via upload sessions, then ``POST .../send``;
  ``Mail.ReadWrite`` + ``Mail.Send``) otherwise.

Admission (per-mailbox concurrency, pacing, pauses) is the queue runner's: the deliverer
provides L{IMailboxRouting} — the sending mailbox of an entry and its limits — and the runner
hands it only what that mailbox can start now.  A 429 comes back as a L{Transient} with
``pause_until`` (the mailbox's pause) and cause ``throttled``; a tenant paused for credential
trouble as ``pause_scope="tenant"``; 5xx, connection and token-endpoint trouble carry their
shared cause, so the runner can release what an outage held back once the tenant recovers.

Expected trouble never errbacks; it becomes L{Transient} or L{Permanent}.  Credential trouble
that an admin must fix pauses the whole tenant with growing backoff (the mail stays queued)
and is visible through L{GraphDeliverer.health}.

The draft steps live in L{gateway.delivery.graph.drafts} and the check that the file is
still the one accepted in L{gateway.delivery.graph.integrity}; this module keeps the flow of
one attempt, the authenticated Graph call and the tenant's state.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar, Union

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config.graph import GraphConfig
from gateway.delivery.graph.attempt import Attempt, StepFailed, TenantAuthFailure
from gateway.delivery.graph.body import base64_length
from gateway.delivery.graph.client import GraphClient, GraphResponse, GraphTransportError
from gateway.delivery.graph.credentials import (
    ICredentialResolver,
    TenantCredentials,
    UnknownCredentials,
)
from gateway.delivery.graph.drafts import UPLOAD_SESSION_MINIMUM, DraftSending
from gateway.delivery.graph.integrity import IntegrityCheck, NoJournal, digest_algorithm, message_digest
from gateway.delivery.graph.mime import (
    MessageFormatError,
    normalise,
)
from gateway.delivery.graph.outcomes import (
    describe,
    failure_outcome,
    is_mailbox_concurrency,
    step_succeeded,
    transport_outcome,
)
from gateway.delivery.graph.prepare import INLINE_PREPARE_LIMIT, PreparedMessage, prepare_message
from gateway.delivery.graph.scheduler import MailboxThrottles
from gateway.delivery.graph.sizes import single_request_limit
from gateway.delivery.graph.structure import plan_extraction, scan_structure
from gateway.delivery.graph.token import TokenError, TokenProviders
from gateway.delivery.interfaces import (
    CAUSE_CONNECTION,
    CAUSE_PAUSED,
    CAUSE_SERVICE,
    CAUSE_THROTTLED,
    CAUSE_TOKEN,
    Delivered,
    IDeliverer,
    IMailboxRouting,
    MailboxKey,
    MailboxLimits,
    Outcome,
    Permanent,
    Transient,
)

_O = TypeVar("_O", bound=Outcome)

#: How a MailboxConcurrency 429 without Retry-After pauses the mailbox (it is not time based).
CONCURRENCY_PAUSE = 2.0


@attrs.frozen
class TenantHealth:
    """
    What the deliverer knows about one tenant's credentials, for the status page.

    ``state``: ``"unknown"`` (no token asked for yet), ``"ok"``, ``"config-error"`` (an admin
    must act; deliveries paused until ``paused_until``) or ``"unreachable"`` (network trouble
    talking to the login host; deliveries retry normally).
    """

    label: str
    state: str
    detail: str = ""
    since: float = 0.0
    paused_until: float = 0.0
    token_expires_at: float = 0.0  # of the last token issued; 0 before the first one
    #: Since when Graph itself has not been answering (5xx, no connection) while tokens work;
    #: 0 while it answers.  ``graph_trouble`` is the last such reason.
    graph_trouble_since: float = 0.0
    graph_trouble: str = ""


#: Consecutive sends that met Graph trouble (5xx, no connection) before the tenant reads as
#: degraded: one 503 is weather, several in a row with nothing delivered is an outage.
GRAPH_TROUBLE_THRESHOLD = 3


@attrs.define
class GraphStats:
    """Counters since start (for metrics and tests)."""

    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    possibly_duplicated: int = 0
    token_retries: int = 0
    paths: dict = attrs.field(factory=dict)


@attrs.define
class _Tenant:
    label: str
    state: str = "unknown"
    detail: str = ""
    since: float = 0.0
    paused_until: float = 0.0
    failures: int = 0
    #: Graph refused a fresh token: only a Graph answer (not another token) shows it is fixed.
    graph_refused: bool = False
    token_expires_at: float = 0.0
    key: tuple = ()
    graph_failures: int = 0
    graph_trouble_since: float = 0.0
    graph_trouble: str = ""


@implementer(IDeliverer, IMailboxRouting)
class GraphDeliverer(DraftSending, IntegrityCheck):
    """
    Delivers spool entries through Microsoft Graph.

    ``client`` is a L{GraphClient}; ``tokens`` a L{TokenProviders}; ``resolver`` an
    L{ICredentialResolver} (``None`` → credential refs are unknown, default tenant only);
    ``clock`` drives every wait; ``blocking(f, *args)`` runs file work off the reactor thread
    (a dedicated ThreadPool in production, a synchronous call in unit tests);
    ``default_credentials`` (the configured tenant) is listed by L{health} from the start.
    ``journal`` provides L{IDraftJournal} and L{IEntryQuarantine} — the spool in production
    (set by L{gateway.wiring}), L{NoJournal} otherwise.
    """

    log = Logger()

    def __init__(
        self,
        config: GraphConfig,
        client: GraphClient,
        tokens: TokenProviders,
        resolver: ICredentialResolver,
        clock: IReactorTime,
        throttles: Optional[MailboxThrottles] = None,
        blocking: Optional[Callable[..., Deferred]] = None,
        default_credentials: Optional[TenantCredentials] = None,
        journal: Any = None,
        admission: Any = None,
    ) -> None:
        self.config = config
        self.client = client
        self.tokens = tokens
        self.resolver = resolver
        self.clock = clock
        self.throttles = throttles or MailboxThrottles(clock)
        #: [cluster]: the admission every gateway shares (L{gateway.cluster.admission.IMailboxAdmission}).
        #: It paces each mailbox for the whole cluster, so the runner's own queues only bound
        #: concurrency (no second, per-node pacing on top).
        self.admission = admission
        self.mailbox_limits = MailboxLimits(config.mailbox_concurrency,
                                            config.mailbox_rate if admission is None else None, config.mailbox_burst)
        self._blocking = blocking or maybeDeferred
        self.stats = GraphStats()
        self.observers: tuple = ()
        self.journal = journal if journal is not None else NoJournal()
        self._tenants: dict[tuple, _Tenant] = {}
        # Entries already alarmed about (integrity): one CRITICAL line per entry, not per attempt.
        self._alarmed: set[str] = set()
        default = default_credentials or getattr(resolver, "default", None)
        if isinstance(default, TenantCredentials):
            self._tenant(default)  # so health() shows the configured tenant from the start

    # -- public ---------------------------------------------------------------------------

    def deliver(self, entry: Any) -> "Deferred[Any]":
        d = Deferred.fromCoroutine(self._deliver(entry))
        d.addErrback(self._unexpected, entry)
        return d

    def mailbox_key(self, entry: Any) -> MailboxKey:
        """
        The runner's queue for ``entry``: its credentials and the sending mailbox recorded at
        intake (``sending_mailbox``).  Records without one (written before intake recorded
        it) fall back without reading the message: the fixed ``send_as`` mailbox when one is
        configured, else the envelope sender.  With ``send_as = "header-from"`` that can
        differ from the From address the send then uses; two queues may then share one
        mailbox, and Graph's MailboxConcurrency 429 (a pause) is what keeps that in check.
        """
        mailbox = entry.sending_mailbox
        if not mailbox:
            fixed = self.config.send_as not in ("header-from", "envelope-from")
            mailbox = self.config.send_as if fixed else entry.envelope.sender
        return MailboxKey(entry.provenance.credential_ref, normalise(mailbox or ""))

    def health(self) -> tuple[TenantHealth, ...]:
        """One L{TenantHealth} per tenant seen so far (the default tenant once used)."""
        for tenant in self._tenants.values():
            self._adopt_shared_pause(tenant)  # [cluster]: paused by another gateway shows here too
        return tuple(TenantHealth(t.label, t.state, t.detail, t.since, t.paused_until, t.token_expires_at,
                                  t.graph_trouble_since, t.graph_trouble)
                     for t in self._tenants.values())

    # -- the flow -------------------------------------------------------------------------

    async def _deliver(self, entry: Any) -> Outcome:
        try:
            credentials = await self.resolver.resolve(entry.provenance.credential_ref)
        except UnknownCredentials as e:
            return self._finish(entry, Permanent(str(e), status="5.7.0", remote_code="UnknownCredentials"))
        except Exception as e:  # noqa: BLE001 - a credential store hiccup must not lose mail
            return self._finish(entry, Transient(f"delivery credentials unavailable ({type(e).__name__})"))
        tenant = self._tenant(credentials)
        key = self.mailbox_key(entry)
        paused = self._paused(tenant, key)
        if paused is not None:
            return self._finish(entry, paused, quiet=True)
        prepared = await self._prepare(entry)
        if not isinstance(prepared, PreparedMessage):
            return self._finish(entry, prepared)
        try:
            token = await self.tokens.acquire(credentials)
        except TokenError as e:
            return self._finish(entry, self._token_failed(tenant, e))
        tenant.token_expires_at = token.expires_at
        if not tenant.graph_refused:
            self._tenant_ok(tenant)
        slot = None
        if self.admission is not None:
            # [cluster]: a slot (a lease in Redis) and a pacing turn shared by every gateway.
            slot = await self.admission.admit(self._shared_key(credentials, key), entry.queue_id)
            if not hasattr(slot, "release"):
                return self._finish(entry, Transient(
                    f"{slot.reason} ({key.mailbox})", retry_at=slot.retry_at, attempted=False,
                    cause=CAUSE_THROTTLED, pause_until=slot.retry_at), quiet=True)
        attempt = Attempt(entry, credentials, token, prepared.mailbox, key)
        outcome = await self._attempt(attempt, tenant, prepared, slot)
        self._note_attempt(attempt, tenant, outcome)
        return self._finish(entry, outcome, attempt=attempt)

    def _paused(self, tenant: _Tenant, key: MailboxKey) -> Optional[Transient]:
        """Not even tried: the tenant is paused for credential trouble, or Graph throttled the mailbox."""
        self._adopt_shared_pause(tenant)
        now = self.clock.seconds()
        if tenant.paused_until > now:
            return Transient(
                f"tenant {tenant.label} paused after credential trouble: {tenant.detail}",
                retry_at=tenant.paused_until, attempted=False, cause=CAUSE_PAUSED,
                pause_until=tenant.paused_until, pause_scope="tenant")
        paused_until = self.throttles.paused_until(key)
        if paused_until > now:
            # The runner honours pauses; this only guards callers that do not.
            return Transient(
                f"Graph throttled this mailbox ({key.mailbox})", retry_at=paused_until, attempted=False,
                cause=CAUSE_THROTTLED, pause_until=paused_until)
        return None

    async def _prepare(self, entry: Any) -> Union[PreparedMessage, Transient, Permanent]:
        """The message read and planned, or why it cannot go (before asking for a token)."""
        try:
            prepared = await self._read_prepared(entry)
        except MessageFormatError as e:
            # A file garbled on disk must be quarantined, not bounced as the sender's fault.
            changed = await self._integrity_outcome(entry)
            if changed is not None:
                return changed
            return Permanent(f"message cannot be sent through Graph: {e}", status="5.6.0")
        except OSError as e:
            return Transient(f"cannot read the message file: {e.strerror or e}")
        return self._too_large(prepared) or prepared

    async def _attempt(self, attempt: Attempt, tenant: _Tenant, prepared: PreparedMessage, slot: Any) -> Outcome:
        """Send, turning what ended the attempt into its outcome; the admission slot is released either way."""
        try:
            return await self._send(attempt, prepared)
        except StepFailed as e:
            return e.outcome
        except TenantAuthFailure as e:
            tenant.graph_refused = True
            return self._tenant_config_trouble(
                tenant, f"Graph refused a freshly issued token ({describe(e.response)}); "
                        f"check the app's Mail.Send permission and admin consent")
        except TokenError as e:
            return self._token_failed(tenant, e)
        finally:
            if slot is not None:
                slot.release()

    def _note_attempt(self, attempt: Attempt, tenant: _Tenant, outcome: Outcome) -> None:
        """What the attempt showed about the tenant's token, Graph's health and the mailbox's pace."""
        if attempt.token_accepted and tenant.graph_refused:
            self._tenant_ok(tenant)
        self._note_graph_answers(tenant, outcome)
        if isinstance(outcome, Delivered):
            self.throttles.succeeded(attempt.key)
            if self.admission is not None:
                self.admission.succeeded(self._shared_key(attempt.credentials, attempt.key))

    def _read_prepared(self, entry: Any) -> Deferred:
        """
        L{prepare_message} for ``entry``: in the reactor thread for a message of at most
        L{INLINE_PREPARE_LIMIT} bytes, in a file thread otherwise.  The request body of such a
        message is read in the reactor thread anyway (one slice, see L{StreamingBodyProducer});
        a thread trip for its header section cost more than the read: waking a worker, the
        GIL passed back and forth, a wait for the reactor to pick the result up — 10 to 40 ms
        holding the mailbox's slot at 40 sends in flight (bench_drain), against a few tens of
        microseconds of reading from the page cache.
        """
        args = (entry.message_path, tuple(entry.envelope.recipients), entry.envelope.sender, self.config,
                getattr(entry, "sending_mailbox", None), digest_algorithm(entry))
        size = getattr(entry, "size", None)
        if isinstance(size, int) and 0 <= size <= INLINE_PREPARE_LIMIT:
            return maybeDeferred(prepare_message, *args)
        return self._blocking(prepare_message, *args)

    def _too_large(self, prepared: PreparedMessage) -> Optional[Permanent]:
        """Refuse before asking for a token what no Graph path can carry."""
        if self.config.large_messages:
            if prepared.section.size > self.config.max_message_size:
                return Permanent(f"message of {prepared.section.size} bytes exceeds graph.max_message_size "
                                 f"({self.config.max_message_size})", status="5.3.4", remote_code="MessageTooLarge")
            return None
        if base64_length(prepared.mime_length) > self.config.max_request_size:
            return Permanent(
                f"message of {prepared.section.size} bytes is larger than one Graph request carries "
                f"({single_request_limit(self.config)} bytes) and graph.large_messages is off",
                status="5.3.4", remote_code="MessageTooLarge")
        return None

    async def _send(self, attempt: Attempt, prepared: PreparedMessage) -> Outcome:
        # Leftover draft first: even a message about to be quarantined must not leave one.
        leftover = await self._delete_leftover_draft(attempt)
        if leftover is not None:
            return leftover
        changed = await self._integrity_outcome(attempt.entry, prepared.digest)
        if changed is not None:
            return changed
        limit = self.config.max_request_size
        fits = base64_length(prepared.mime_length) <= limit
        if fits and prepared.plan.kind != "draft":
            attempt.path = f"sendMail-{prepared.plan.kind}"
            response = await self._call(attempt, "sendMail", self.client.send_mime, prepared.mime)
            if response.code != 413 or not self.config.large_messages:
                return self._sent(attempt, response, "sendMail")
            # Graph's real limit was lower than configured: this message needs the large path.
            self.log.info("graph {queue_id}: 413 for a single request, retrying through the draft path",
                          queue_id=attempt.entry.queue_id)
        elif fits:
            attempt.path = "draft"
            return await self._send_draft(attempt, prepared.draft_bcc, prepared.path, prepared.mime, ())
        attempt.path = "draft-large"
        root = await self._blocking(scan_structure, prepared.path, prepared.section.size)
        header = prepared.plan.header if prepared.plan.kind != "plain" else prepared.section.raw
        extraction = plan_extraction(root, prepared.path, header, prepared.section.body_offset,
                                     prepared.section.size, limit)
        if extraction is None:
            return Permanent(
                "message is too large for Graph: even without its attachments it exceeds one request "
                f"({limit} bytes base64)", status="5.3.4", remote_code="MessageTooLarge")
        return await self._send_draft(attempt, prepared.draft_bcc, prepared.path, extraction.skeleton,
                                      extraction.attachments)

    # -- Graph steps ----------------------------------------------------------------------

    async def _call(self, attempt: Attempt, step: str, method: Callable, *args: Any) -> GraphResponse:
        """One authenticated Graph call; a 401 evicts the token and retries exactly once."""
        graph_url = attempt.credentials.graph_url
        try:
            response = await method(graph_url, attempt.mailbox, attempt.token, *args)
            if response.code != 401:
                attempt.token_accepted = True
                return response
            self.stats.token_retries += 1
            self.log.info("graph {queue_id}: token refused ({code}), fetching a new one",
                          queue_id=attempt.entry.queue_id, code=response.error_code or f"HTTP {response.code}")
            await self.tokens.evict(attempt.credentials, attempt.token)
            attempt.token = await self.tokens.acquire(attempt.credentials)
            response = await method(graph_url, attempt.mailbox, attempt.token, *args)
        except GraphTransportError as e:
            raise StepFailed(transport_outcome(e, step)) from None
        if response.code == 401:
            raise TenantAuthFailure(response)
        attempt.token_accepted = True
        return response

    def _sent(self, attempt: Attempt, response: GraphResponse, step: str) -> Outcome:
        """Only the documented ``202`` is delivered; any other 2xx is transient, possibly delivered."""
        if step_succeeded(response, step):
            attempt.request_id = response.request_id
            return Delivered(f"graph {attempt.path} via {attempt.mailbox}"
                             + (f" request-id {response.request_id}" if response.request_id else ""))
        return self._step_failure(attempt, response, step)

    def _step_failure(self, attempt: Attempt, response: GraphResponse, step: str,
                      hint: bool = False) -> Union[Transient, Permanent]:
        outcome = failure_outcome(response, self.clock.seconds(), step)
        if response.code == 429 and isinstance(outcome, Transient):
            seconds = response.retry_after
            if seconds is None and is_mailbox_concurrency(response):
                seconds = CONCURRENCY_PAUSE
            until = self.throttles.pause(attempt.key, seconds, f"Graph throttled {attempt.mailbox}")
            if self.admission is not None:  # [cluster]: every gateway honours the Retry-After
                until = max(until, self.admission.pause(self._shared_key(attempt.credentials, attempt.key),
                                                        until - self.clock.seconds(),
                                                        f"Graph throttled {attempt.mailbox}"))
            outcome = attrs.evolve(outcome, retry_at=until, pause_until=until, cause=CAUSE_THROTTLED)
        if hint and response.code == 403 and isinstance(outcome, Permanent):
            outcome = attrs.evolve(outcome, reason=outcome.reason + " (the draft path needs the Mail.ReadWrite "
                                   "application permission; or set graph.hidden_recipients = \"bcc-header\")")
        return outcome

    # -- tenant state ---------------------------------------------------------------------

    def _tenant(self, credentials: TenantCredentials) -> _Tenant:
        t = self._tenants.get(credentials.tenant_key)
        if t is None:
            t = self._tenants[credentials.tenant_key] = _Tenant(credentials.label, since=self.clock.seconds(),
                                                                key=credentials.tenant_key)
        return t

    @staticmethod
    def _shared_key(credentials: TenantCredentials, key: MailboxKey) -> tuple:
        """The cluster's name for a mailbox: the tenant itself (not this node's credential ref) + mailbox."""
        return (credentials.tenant_key, key.mailbox)

    def _adopt_shared_pause(self, tenant: _Tenant) -> None:
        """
        Another gateway of the cluster paused this tenant for credential trouble: honour it
        here too (no token request, no Graph request) and show it as this node's state, so a
        tenant whose credentials fail is not hammered by the other nodes.
        """
        shared = getattr(getattr(self, "admission", None), "tenant_paused", None)
        seen = shared(tenant.key) if shared is not None else None
        if seen is None or seen[0] <= tenant.paused_until:
            return
        if tenant.state != "config-error":
            tenant.since = self.clock.seconds()
            self.log.warn("tenant {label} paused by another gateway of the cluster until {until:.0f}: {detail}",
                          label=tenant.label, until=seen[0], detail=seen[1])
        tenant.state, tenant.detail, tenant.paused_until = "config-error", seen[1], seen[0]

    def _tenant_ok(self, tenant: _Tenant) -> None:
        if tenant.state != "ok":
            if tenant.state == "config-error":
                self.log.info("Graph credentials for tenant {label} work again; deliveries resume", label=tenant.label)
                resume = getattr(getattr(self, "admission", None), "resume_tenant", None)
                if resume is not None:
                    resume(tenant.key)
            tenant.state, tenant.detail, tenant.since = "ok", "", self.clock.seconds()
        tenant.failures = 0
        tenant.paused_until = 0.0
        tenant.graph_refused = False

    def _note_graph_answers(self, tenant: _Tenant, outcome: Outcome) -> None:
        """
        Whether Graph itself answers: a valid token says nothing about graph.microsoft.com being
        reachable, and /healthz should say "degraded" during a Graph outage too, not only
        during a token endpoint outage.
        """
        if isinstance(outcome, Transient) and outcome.cause in (CAUSE_SERVICE, CAUSE_CONNECTION):
            tenant.graph_failures += 1
            tenant.graph_trouble = outcome.reason
            if tenant.graph_failures == GRAPH_TROUBLE_THRESHOLD:
                tenant.graph_trouble_since = self.clock.seconds()
                self.log.warn("tenant {label}: Graph is not answering ({reason}; {count} sends in a row); "
                              "mail stays queued and is retried", label=tenant.label, reason=outcome.reason,
                              count=tenant.graph_failures)
            return
        if tenant.graph_trouble_since:
            self.log.info("tenant {label}: Graph answers again", label=tenant.label)
        tenant.graph_failures, tenant.graph_trouble_since, tenant.graph_trouble = 0, 0.0, ""

    def _token_failed(self, tenant: _Tenant, error: TokenError) -> Transient:
        if error.is_config:
            return self._tenant_config_trouble(tenant, f"token request refused: {error}")
        if tenant.state != "unreachable":
            tenant.state, tenant.since = "unreachable", self.clock.seconds()
            self.log.warn("cannot get a Graph token for tenant {label}: {error}; messages stay queued and "
                          "are retried", label=tenant.label, error=str(error))
        tenant.detail = str(error)
        return Transient(f"no Graph token: {error}", cause=CAUSE_TOKEN)

    def _tenant_config_trouble(self, tenant: _Tenant, detail: str) -> Transient:
        now = self.clock.seconds()
        if tenant.state == "config-error" and tenant.paused_until > now:
            # Deliveries that were already under way when the tenant was paused report the same
            # trouble: that is one event, not one more step of backoff (nor another alarm).
            return Transient(f"tenant {tenant.label}: {tenant.detail}", retry_at=tenant.paused_until,
                             cause=CAUSE_PAUSED, pause_until=tenant.paused_until, pause_scope="tenant")
        tenant.failures += 1
        delay = min(self.config.tenant_backoff * 2 ** (tenant.failures - 1), self.config.tenant_backoff_max)
        if tenant.state != "config-error":
            tenant.since = now
        tenant.state, tenant.detail = "config-error", detail
        tenant.paused_until = now + delay
        share = getattr(getattr(self, "admission", None), "pause_tenant", None)
        if share is not None:  # [cluster]: every gateway pauses this tenant
            share(tenant.key, tenant.paused_until, detail.rstrip("."))
        self.log.critical(
            "GRAPH CONFIGURATION ERROR for tenant {label}: {detail}. Deliveries for this tenant are paused "
            "for {delay:.0f}s and retried with growing backoff; queued mail is kept.",
            label=tenant.label, detail=detail.rstrip("."), delay=delay)
        return Transient(f"tenant {tenant.label}: {detail}", retry_at=tenant.paused_until,
                         cause=CAUSE_PAUSED, pause_until=tenant.paused_until, pause_scope="tenant")

    # -- results --------------------------------------------------------------------------

    def _finish(self, entry: Any, outcome: _O, attempt: Optional[Attempt] = None, quiet: bool = False) -> _O:
        """
        Count the outcome.  The queue runner writes the one info line per state change (with
        this outcome's detail or reason); the lines here are debug-level detail only.
        """
        qid = entry.queue_id
        if isinstance(outcome, Delivered):
            self.stats.delivered += 1
            path = attempt.path if attempt else "?"
            self.stats.paths[path] = self.stats.paths.get(path, 0) + 1
            self.log.debug("graph delivered {queue_id}: {detail}", queue_id=qid, detail=outcome.detail)
        elif isinstance(outcome, Transient):
            self.stats.deferred += 1
            if outcome.possibly_delivered:
                self.stats.possibly_duplicated += 1
            self.log.debug("graph deferred {queue_id}: {reason}", queue_id=qid, reason=outcome.reason,
                           possibly_delivered=outcome.possibly_delivered, quiet=quiet)
        else:
            self.stats.failed += 1
            self.log.debug("graph failed {queue_id}: {reason} [{status}]", queue_id=qid, reason=outcome.reason,
                           status=outcome.status)
        return outcome

    def _unexpected(self, failure: Failure, entry: Any) -> Transient:
        self.log.failure("graph delivery of {queue_id} failed unexpectedly", failure, queue_id=entry.queue_id)
        return self._finish(entry, Transient(f"internal error in Graph delivery ({failure.type.__name__})"))


__all__ = [
    "GraphDeliverer", "TenantHealth", "GraphStats", "PreparedMessage", "prepare_message", "UPLOAD_SESSION_MINIMUM",
    "NoJournal", "message_digest",
]
