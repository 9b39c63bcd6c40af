"""
A fake Microsoft Graph + Entra ID for tests and for trying graphsmtp without a tenant.

It is a twisted.web server on loopback over real HTTPS (certificate from a throw-away
L{TestCA}), so the production code runs unchanged: MSAL discovers the fake authority and gets
app-only tokens from it (client secret, certificate assertion, or federated assertion), treq
posts to it with TLS verification on.  It validates requests the way Graph does where it
matters (bearer token, content types, base64, the ~4 MB request limit, upload-session rules)
and records what each mailbox "sent" (parsed MIME, effective recipients including Bcc,
attachments) for assertions.

Faults can be injected per mailbox and per operation (429 with or without Retry-After,
MailboxConcurrency, 5xx, hangs, slow answers, connection resets, expired tokens, 403/404/413,
token endpoint errors), and the number of concurrent requests per mailbox is tracked so tests
can assert the gateway never exceeded its limits.

    server = yield start_fake_graph(reactor, self.mktemp())
    self.addCleanup(server.stop)
    config = server.graph_config()          # a GraphConfig pointing at the fake
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email
import email.policy
import email.utils
import hashlib
import itertools
import json
import os
import secrets
from typing import Any, Callable, Optional
from urllib.parse import unquote

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web import server as web_server
from twisted.web.resource import Resource

from gateway.config.graph import GraphConfig, certificate_thumbprint
from gateway.config.secrets import Secret
from gateway.testing.certs import TestCA

UPLOAD_SESSION_MINIMUM = 3_000_000
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


# -- what was sent ----------------------------------------------------------------------------

@attrs.define
class FakeAttachment:
    name: str
    content_type: str
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    is_inline: bool = False
    content_id: Optional[str] = None


@attrs.define
class SentMessage:
    """
    One message a mailbox "sent".  ``kind`` is ``mime`` (sendMail with MIME), ``json``
    (sendMail with JSON) or ``draft`` (a draft sent with /send).  ``to``/``cc``/``bcc`` are the
    effective recipients Exchange would deliver to; ``message`` is the parsed MIME, if any.
    """

    mailbox: str
    kind: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    mime: Optional[bytes] = attrs.field(default=None, repr=lambda m: f"<{len(m)} bytes>" if m else "None")
    message: Any = attrs.field(default=None, repr=False)
    attachments: list = attrs.field(factory=list)
    json: Any = attrs.field(default=None, repr=False)
    save_to_sent_items: bool = True

    @property
    def recipients(self) -> set[str]:
        return {a.lower() for a in self.to + self.cc + self.bcc}

    def attachment(self, name: str) -> FakeAttachment:
        for a in self.attachments:
            if a.name == name:
                return a
        raise KeyError(name)


@attrs.define
class _Draft:
    id: str
    mailbox: str
    to: list
    cc: list
    bcc: list
    mime: Optional[bytes] = None
    message: Any = None
    json: Any = None
    attachments: list = attrs.field(factory=list)


@attrs.define
class _UploadSession:
    id: str
    key: str
    mailbox: str
    draft_id: str
    name: str
    content_type: str
    size: int
    is_inline: bool
    content_id: Optional[str]
    received: bytearray = attrs.field(factory=bytearray)


@attrs.frozen
class RequestRecord:
    method: str
    operation: str
    mailbox: Optional[str]
    status: int
    authorization: bool
    content_type: Optional[str]
    length: int
    at: float = 0.0  # when the request arrived (the fake's reactor clock)


# -- faults -----------------------------------------------------------------------------------

@attrs.frozen
class Fault:
    """
    What to do instead of (or before) answering normally.  ``action``: ``respond`` (answer
    with ``status``/``code``/``message`` and optional ``retry_after``), ``hang`` (never
    answer), ``reset`` (abort the connection), ``slow`` (wait ``delay`` seconds, then handle
    normally), ``raw`` (answer ``status`` with ``body`` verbatim, e.g. an HTML proxy error).
    For the token endpoint, ``code`` is the OAuth error and ``error_codes`` the AADSTS numbers.
    """

    action: str = "respond"
    status: int = 500
    code: Optional[str] = None
    message: str = ""
    retry_after: Optional[str] = None
    delay: float = 0.0
    body: bytes = b""
    error_codes: tuple[int, ...] = ()

    @classmethod
    def throttled(cls, retry_after: Optional[str] = "10", reason: str = "RequestRate") -> "Fault":
        return cls(status=429, code="ApplicationThrottled",
                   message=f"Application is over its {reason} limit.", retry_after=retry_after)

    @classmethod
    def mailbox_concurrency(cls, retry_after: Optional[str] = "1") -> "Fault":
        return cls.throttled(retry_after, "MailboxConcurrency")

    @classmethod
    def status_code(cls, status: int, code: Optional[str] = None, message: str = "", retry_after: Optional[str] = None) -> "Fault":
        return cls(status=status, code=code or f"Http{status}", message=message or f"fake {status}", retry_after=retry_after)

    @classmethod
    def expired_token(cls) -> "Fault":
        return cls(status=401, code="InvalidAuthenticationToken", message="Access token has expired or is not yet valid.")

    @classmethod
    def hang(cls) -> "Fault":
        return cls(action="hang")

    @classmethod
    def reset(cls) -> "Fault":
        return cls(action="reset")

    @classmethod
    def slow(cls, delay: float) -> "Fault":
        return cls(action="slow", delay=delay)

    @classmethod
    def invalid_client(cls) -> "Fault":
        return cls(status=401, code="invalid_client", error_codes=(7000215,),
                   message="AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the "
                           "request is the client secret value, not the client secret ID.")

    @classmethod
    def consent_missing(cls) -> "Fault":
        return cls(status=400, code="invalid_client", error_codes=(65001,),
                   message="AADSTS65001: The user or administrator has not consented to use the application.")


@attrs.define
class _FaultRule:
    fault: Fault
    mailbox: Optional[str]
    operation: Optional[str]
    remaining: Optional[int]


# -- the server -------------------------------------------------------------------------------

class FakeGraphServer:
    """
    The fake.  Build it with L{start_fake_graph}.  Public state for assertions: ``sent``,
    ``requests``, ``token_requests``, ``token_methods``, ``max_concurrency``, ``drafts``,
    ``deleted_drafts``.  Attributes for configuration: ``authority``, ``graph_url``,
    ``ca_path``, ``tenant_id``, ``client_id``, ``client_secret``.
    """

    log = Logger()

    def __init__(self, reactor: Any, ca: Optional[TestCA], *, tenant_id: str = "fake-tenant",
                 client_id: str = "00000000-0000-0000-0000-00000000c11e",
                 client_secret: Optional[str] = None, max_request_size: int = 4_000_000,
                 max_chunk: int = 4 * 1024 * 1024, token_lifetime: int = 3599,
                 mailboxes: Optional[set] = None, roles: tuple[str, ...] = ("Mail.Send", "Mail.ReadWrite")) -> None:
        self.reactor = reactor
        self.ca = ca
        #: None for a fake served without TLS (L{gateway.testing.stub_graph}).
        self.ca_path = ca.ca_cert_path if ca is not None else None
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.max_request_size = max_request_size
        self.max_chunk = max_chunk
        self.token_lifetime = token_lifetime
        self.mailboxes = {m.lower() for m in mailboxes} if mailboxes is not None else None
        #: Application permissions an admin consented to: the ``roles`` claim of issued tokens.
        #: Without ``Mail.Send`` Graph answers sends with 403 ErrorAccessDenied, as Graph does.
        self.roles = tuple(roles)
        self.sent: list[SentMessage] = []
        self.requests: list[RequestRecord] = []
        self.token_requests = 0
        self.token_methods: list[str] = []
        self.x5c_seen = False
        self.drafts: dict[str, _Draft] = {}
        self.deleted_drafts = 0
        self.connections = 0
        self.max_concurrency: dict[str, int] = {}
        self.on_sent: list[Callable[[SentMessage], None]] = []
        self._arrival_waiters: list[tuple[str, Deferred]] = []
        self._in_flight: dict[str, int] = {}
        self._faults: list[_FaultRule] = []
        self._tokens: dict[str, float] = {}
        self._token_roles: dict[str, tuple[str, ...]] = {}
        self._client_certs: dict[str, list] = {}
        self._federated: dict[str, set] = {}
        self._uploads: dict[str, _UploadSession] = {}
        self._ids = itertools.count(1)
        self._open: set = set()
        self._closed_waiters: list[Deferred] = []
        self._hanging: list = []
        self._port: Any = None
        self.base = ""
        self._federation_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.federation_issuer = "https://fake-federation.invalid"
        self._jwks: Optional[dict] = None  # the tenant's token-signing keys, made on first request

    # -- addresses ------------------------------------------------------------------------

    @property
    def authority(self) -> str:
        return f"{self.base}/{self.tenant_id}"

    @property
    def graph_url(self) -> str:
        return self.base

    @property
    def token_endpoint(self) -> str:
        return f"{self.base}/{self.tenant_id}/oauth2/v2.0/token"

    def graph_config(self, **overrides: Any) -> GraphConfig:
        """A GraphConfig for this fake (client secret credential) with ``overrides`` applied."""
        config = GraphConfig(
            tenant_id=self.tenant_id, client_id=self.client_id, authority=self.authority,
            graph_url=self.graph_url, client_secret=Secret(self.client_secret, source="fake"),
            verify=self.ca_path, max_request_size=self.max_request_size,
        )
        return attrs.evolve(config, **overrides)

    # -- credentials ----------------------------------------------------------------------

    def register_certificate(self, cert_pem: bytes, client_id: Optional[str] = None) -> None:
        """Accept client assertions signed with this certificate's key (certificate credential)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        self._client_certs.setdefault(client_id or self.client_id, []).append(cert)

    def federated_assertion(self, subject: str = "system:serviceaccount:mail:graphsmtp",
                            client_id: Optional[str] = None, lifetime: int = 600, valid: bool = True) -> str:
        """
        A JWT as a workload identity provider would write it to a token file.  The fake
        trusts ``subject`` for ``client_id`` from now on.  ``valid=False`` gives one signed by
        an unknown key (the token endpoint refuses it).
        """
        import jwt

        client_id = client_id or self.client_id
        self._federated.setdefault(client_id, set()).add(subject)
        now = int(self.reactor.seconds()) if hasattr(self.reactor, "seconds") else 0
        now = max(now, int(datetime.datetime.now(datetime.timezone.utc).timestamp()))
        key = self._federation_key if valid else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        claims = {"iss": self.federation_issuer, "sub": subject, "aud": FEDERATION_AUDIENCE,
                  "iat": now, "nbf": now, "exp": now + lifetime, "jti": secrets.token_hex(8)}
        return jwt.encode(claims, key, algorithm="RS256")

    def issue_token(self, client_id: Optional[str] = None) -> str:
        """
        A bearer token this fake accepts (as if the client had asked the token endpoint), for
        tests that bypass MSAL (L{gateway.testing.stub_graph}).
        """
        token = self._issue_token(client_id or self.client_id, self.tenant_id)
        self._tokens[token] = self._now() + self.token_lifetime
        self._token_roles[token] = self.roles
        return token

    def expire_tokens(self) -> None:
        """Every token issued so far is now expired (Graph answers 401 InvalidAuthenticationToken)."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    # -- faults ---------------------------------------------------------------------------

    def inject(self, fault: Fault, mailbox: Optional[str] = None, operation: Optional[str] = None,
               times: Optional[int] = 1) -> None:
        """
        Apply ``fault`` to the next ``times`` requests (``None``: until cleared) for
        ``mailbox`` (any when ``None``) and ``operation`` (``discovery``, ``token``,
        ``sendMail``, ``createMessage``, ``patchMessage``, ``deleteMessage``, ``addAttachment``,
        ``createUploadSession``, ``upload``, ``send``; any when ``None``).
        """
        self._faults.append(_FaultRule(fault, mailbox.lower() if mailbox else None, operation, times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def _take_fault(self, mailbox: Optional[str], operation: str) -> Optional[Fault]:
        for rule in self._faults:
            if rule.mailbox is not None and rule.mailbox != mailbox:
                continue
            if rule.operation is not None and rule.operation != operation:
                continue
            if rule.operation is None and operation in ("discovery", "keys", "token") and rule.mailbox is None:
                continue  # an "any operation" rule is about Graph, not about the login host
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._faults.remove(rule)
            return rule.fault
        return None

    # -- queries --------------------------------------------------------------------------

    def busiest_window(self, mailbox: str, window: float, operation: str = "sendMail") -> int:
        """
        The most ``operation`` requests for ``mailbox`` that arrived within any ``window``
        seconds (a sliding window over arrival times): what Exchange's per-minute limit counts.
        """
        times = sorted(r.at for r in self.requests if r.mailbox == mailbox.lower() and r.operation == operation)
        best, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= window:
                first += 1
            best = max(best, last - first + 1)
        return best

    def sent_by(self, mailbox: str) -> list[SentMessage]:
        return [m for m in self.sent if m.mailbox == mailbox.lower()]

    def received_by(self, address: str) -> list[SentMessage]:
        """Messages the given address would receive."""
        return [m for m in self.sent if address.lower() in m.recipients]

    def arrival(self, operation: str) -> Deferred:
        """
        Fires (with the mailbox) when the next request for ``operation`` arrives, before it is
        answered or held by a fault: lets a test act at an exact point of a delivery (for
        example kill the gateway while an upload is held by ``Fault.hang()``).
        """
        d: Deferred = Deferred()
        self._arrival_waiters.append((operation, d))
        return d

    def operations(self, mailbox: Optional[str] = None) -> list[str]:
        return [r.operation for r in self.requests if mailbox is None or r.mailbox == mailbox.lower()]

    # -- lifecycle ------------------------------------------------------------------------

    def listen(self, endpoint: Any) -> Deferred:
        site = _TrackingSite(FakeGraphResource(self), self)
        d = endpoint.listen(site)

        def listening(port: Any) -> "FakeGraphServer":
            self._port = port
            address = port.getHost()
            self.base = f"https://{address.host}:{address.port}"
            return self

        return d.addCallback(listening)

    def stop(self) -> Deferred:
        """Stop listening, drop every connection (hanging ones too) and wait until they are gone."""
        d = self._port.stopListening() if self._port is not None else succeed(None)
        self._port = None
        for call in self._hanging:
            if call.active():
                call.cancel()
        self._hanging.clear()
        for proto in list(self._open):
            # Site builds a protocol-switching wrapper; the transport sits on its channel.
            transport = getattr(proto, "transport", None) or getattr(getattr(proto, "_channel", None), "transport", None)
            if transport is not None:
                transport.abortConnection()

        def all_closed(_: Any) -> Deferred:
            if not self._open:
                return succeed(None)
            waiter: Deferred = Deferred()
            self._closed_waiters.append(waiter)
            return waiter

        return d.addCallback(all_closed)

    def _connection_closed(self, proto: Any) -> None:
        self._open.discard(proto)
        if not self._open:
            waiters, self._closed_waiters = self._closed_waiters, []
            for w in waiters:
                w.callback(None)

    # -- request handling -----------------------------------------------------------------

    def handle(self, request: Any) -> Any:
        path = [unquote(p) for p in request.path.decode("latin-1").split("/") if p]
        method = request.method.decode("ascii")
        operation, mailbox, params = _route(method, path, self.tenant_id)
        if mailbox is None and operation == "upload":
            session = self._uploads.get(params.get("session", ""))
            mailbox = session.mailbox if session else None
        body = request.content.read()
        request.content.seek(0)
        record = dict(method=method, operation=operation, mailbox=mailbox,
                      authorization=request.getHeader("authorization") is not None,
                      content_type=request.getHeader("content-type"), length=len(body),
                      at=self.reactor.seconds())
        if mailbox is not None:
            self._in_flight[mailbox] = self._in_flight.get(mailbox, 0) + 1
            self.max_concurrency[mailbox] = max(self.max_concurrency.get(mailbox, 0), self._in_flight[mailbox])

            def done(_: Any) -> None:
                self._in_flight[mailbox] -= 1

            request.notifyFinish().addBoth(done)

        for waiter in [w for w in self._arrival_waiters if w[0] == operation]:
            self._arrival_waiters.remove(waiter)
            waiter[1].callback(mailbox)
        fault = self._take_fault(mailbox, operation)
        if fault is not None and fault.action == "slow":
            call = self.reactor.callLater(fault.delay, self._answer, request, operation, mailbox, params, body, record)
            self._hanging.append(call)
            return web_server.NOT_DONE_YET
        if fault is not None:
            return self._apply_fault(request, fault, operation, record)
        return self._answer(request, operation, mailbox, params, body, record)

    def _answer(self, request: Any, operation: str, mailbox: Optional[str], params: dict, body: bytes, record: dict) -> Any:
        status, headers, payload = self._dispatch(request, operation, mailbox, params, body)
        self.requests.append(RequestRecord(status=status, **record))
        request.setResponseCode(status)
        request.setHeader("request-id", secrets.token_hex(8))
        for name, value in headers.items():
            request.setHeader(name, value)
        if payload is not None:
            request.setHeader("content-type", "application/json")
            data = json.dumps(payload).encode("utf-8")
        else:
            data = b""
        if request.finished or request._disconnected:
            return web_server.NOT_DONE_YET
        request.write(data)
        request.finish()
        return web_server.NOT_DONE_YET

    def _apply_fault(self, request: Any, fault: Fault, operation: str, record: dict) -> Any:
        self.requests.append(RequestRecord(status=0 if fault.action in ("hang", "reset") else fault.status, **record))
        if fault.action == "hang":
            return web_server.NOT_DONE_YET
        if fault.action == "reset":
            request.channel.transport.abortConnection()
            return web_server.NOT_DONE_YET
        request.setResponseCode(fault.status)
        if fault.retry_after is not None:
            request.setHeader("retry-after", fault.retry_after)
        if fault.action == "raw":
            request.setHeader("content-type", "text/html")
            return fault.body
        request.setHeader("content-type", "application/json")
        if operation in ("token", "discovery", "keys"):
            return json.dumps({"error": fault.code or "server_error", "error_description": fault.message,
                               "error_codes": list(fault.error_codes)}).encode("utf-8")
        return json.dumps(_graph_error(fault.code or "ServiceError", fault.message)).encode("utf-8")

    def _dispatch(self, request: Any, operation: str, mailbox: Optional[str], params: dict, body: bytes):
        if operation == "discovery":
            return self._discovery(params)
        if operation == "keys":
            return self._keys(params)
        if operation == "token":
            return self._token(request, params)
        if operation == "unknown":
            return 404, {}, _graph_error("UnknownUrl", "Unsupported request")
        if operation == "upload":
            return self._upload(request, params, body)
        if not self._authorized(request):
            return 401, {}, _graph_error("InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
        if operation in ("sendMail", "send") and "Mail.Send" not in self._roles_of(request):
            return 403, {}, _graph_error("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if self.mailboxes is not None and mailbox not in self.mailboxes:
            return 404, {}, _graph_error("ErrorInvalidUser", f"The requested user '{mailbox}' is invalid.")
        if len(body) > self.max_request_size:
            return 413, {}, _graph_error("RequestEntityTooLarge", "The request is too large.")
        handler = getattr(self, "_op_" + operation)
        return handler(request, mailbox, params, body)

    def _authorized(self, request: Any) -> bool:
        value = request.getHeader("authorization") or ""
        if not value.startswith("Bearer "):
            return False
        expiry = self._tokens.get(value[len("Bearer "):])
        return expiry is not None and expiry > self._now()

    def _roles_of(self, request: Any) -> tuple[str, ...]:
        value = request.getHeader("authorization") or ""
        return self._token_roles.get(value[len("Bearer "):], ())

    def _now(self) -> float:
        return datetime.datetime.now(datetime.timezone.utc).timestamp()

    # -- Entra ----------------------------------------------------------------------------

    def _discovery(self, params: dict):
        """
        The tenant's OpenID Connect discovery document with the fields and values Entra's v2.0
        endpoint returns (MSAL for Python needs only the two endpoints; msal-node and other OIDC
        clients also read ``issuer``, ``jwks_uri`` and the ``*_supported`` lists), with every
        URL pointing at this fake.
        """
        tenant = params["tenant"]
        if tenant != self.tenant_id:
            return 400, {}, {"error": "invalid_tenant", "error_codes": [90002],
                             "error_description": f"AADSTS90002: Tenant '{tenant}' not found."}
        base = f"{self.base}/{tenant}"
        return 200, {}, {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.base}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                                 "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
                                 "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }

    def _keys(self, params: dict):
        """The JWKS at ``jwks_uri``: the tenant's RS256 signing key, shaped like Entra's (kid = x5t, x5c)."""
        if params["tenant"] != self.tenant_id:
            return 400, {}, {"error": "invalid_tenant", "error_codes": [90002],
                             "error_description": f"AADSTS90002: Tenant '{params['tenant']}' not found."}
        if self._jwks is None:
            self._jwks = {"keys": [_signing_jwk(f"{self.base}/{self.tenant_id}/v2.0")]}
        return 200, {}, self._jwks

    def _token(self, request: Any, params: dict):
        self.token_requests += 1
        form = {k.decode(): v[0].decode() for k, v in request.args.items()}
        client_id = form.get("client_id", "")
        if params["tenant"] != self.tenant_id:
            return 400, {}, {"error": "invalid_request", "error_codes": [90002],
                             "error_description": "AADSTS90002: Tenant not found."}
        if form.get("grant_type") != "client_credentials" or not form.get("scope", "").endswith("/.default"):
            return 400, {}, {"error": "invalid_request", "error_description": "AADSTS900144: bad request"}
        if client_id not in {self.client_id} | set(self._client_certs) | set(self._federated):
            return 400, {}, {"error": "unauthorized_client", "error_codes": [700016],
                             "error_description": f"AADSTS700016: Application with identifier '{client_id}' was not found."}
        if "client_secret" in form:
            if client_id != self.client_id or not secrets.compare_digest(form["client_secret"], self.client_secret):
                return 401, {}, {"error": "invalid_client", "error_codes": [7000215],
                                 "error_description": "AADSTS7000215: Invalid client secret provided."}
            method = "secret"
        elif form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            checked = self._check_assertion(client_id, form.get("client_assertion", ""))
            if checked == "expired":
                return 401, {}, {"error": "invalid_client", "error_codes": [700027],
                                 "error_description": "AADSTS700027: Client assertion failed signature validation. "
                                                      "[Reason - The key used is expired.]"}
            if checked is None:
                return 401, {}, {"error": "invalid_client", "error_codes": [700027],
                                 "error_description": "AADSTS700027: Client assertion failed signature validation."}
            method = checked
        else:
            return 401, {}, {"error": "invalid_client", "error_codes": [7000216],
                             "error_description": "AADSTS7000216: client_assertion or client_secret is required."}
        token = self._issue_token(client_id, params["tenant"])
        self._tokens[token] = self._now() + self.token_lifetime
        self._token_roles[token] = self.roles
        self.token_methods.append(method)
        # No "scope" in the reply, as Entra answers client credentials: MSAL caches a token under the
        # scope it asked for unless the reply names another (msal/token_cache.py, TokenCache.add).
        return 200, {}, {"token_type": "Bearer", "expires_in": self.token_lifetime,
                         "ext_expires_in": self.token_lifetime, "access_token": token}

    def _issue_token(self, client_id: str, tenant: str) -> str:
        """A JWT-shaped app-only token (unsigned: only the fake checks it) with a ``roles`` claim."""
        def part(value: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        now = int(self._now())
        claims = {"aud": self.graph_url, "tid": tenant, "appid": client_id, "iat": now,
                  "exp": now + self.token_lifetime, "roles": list(self.roles), "jti": secrets.token_hex(8)}
        return f"{part({'typ': 'JWT', 'alg': 'none'})}.{part(claims)}.{secrets.token_urlsafe(16)}"

    def _check_assertion(self, client_id: str, assertion: str) -> Optional[str]:
        """How a client assertion authenticates ``client_id``: "certificate", "federated", "expired" or None."""
        import jwt

        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return None
        if "x5t" in header or "x5t#S256" in header:
            for cert in self._client_certs.get(client_id, []):
                if _thumbprints_match(cert, header):
                    return self._certificate_assertion(client_id, assertion, header, cert)
            return None
        return self._federated_assertion(client_id, assertion)

    def _certificate_assertion(self, client_id: str, assertion: str, header: dict, cert: Any) -> Optional[str]:
        import jwt

        try:
            claims = jwt.decode(assertion, cert.public_key(), algorithms=["RS256", "PS256"],
                                audience=self.token_endpoint, issuer=client_id)
        except jwt.PyJWTError:
            return None
        if claims.get("sub") != client_id:
            return None
        if cert.not_valid_after_utc.timestamp() < self._now():
            return "expired"  # Entra refuses keys whose certificate has expired
        if "x5c" in header:
            self.x5c_seen = True
        return "certificate"

    def _federated_assertion(self, client_id: str, assertion: str) -> Optional[str]:
        import jwt

        try:
            claims = jwt.decode(assertion, self._federation_key.public_key(), algorithms=["RS256"],
                                audience=FEDERATION_AUDIENCE, issuer=self.federation_issuer)
        except jwt.PyJWTError:
            return None
        if claims.get("sub") not in self._federated.get(client_id, set()):
            return None
        return "federated"

    # -- Graph ----------------------------------------------------------------------------

    def _op_sendMail(self, request: Any, mailbox: str, params: dict, body: bytes):
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type == "text/plain":
            mime, error = _decode_mime(body)
            if error:
                return 400, {}, error
            msg = email.message_from_bytes(mime, policy=email.policy.default)
            to, cc, bcc = _header_recipients(msg)
            if not (to or cc or bcc):
                return 400, {}, _graph_error("ErrorInvalidRecipients", "At least one recipient isn't valid.")
            self._record(SentMessage(mailbox, "mime", to, cc, bcc, mime=mime, message=msg))
            return 202, {}, None
        if content_type == "application/json":
            try:
                data = json.loads(body)
                message = data["message"]
            except (ValueError, KeyError, TypeError):
                return 400, {}, _graph_error("ErrorInvalidRequest", "Invalid JSON body.")
            to, cc, bcc = (_json_recipients(message, k) for k in ("toRecipients", "ccRecipients", "bccRecipients"))
            if not (to or cc or bcc):
                return 400, {}, _graph_error("ErrorInvalidRecipients", "At least one recipient isn't valid.")
            attachments = [_json_attachment(a) for a in message.get("attachments", [])]
            self._record(SentMessage(mailbox, "json", to, cc, bcc, json=data, attachments=attachments,
                                     save_to_sent_items=data.get("saveToSentItems", True)))
            return 202, {}, None
        return 415, {}, _graph_error("UnsupportedMediaType", f"Content-Type {content_type!r} is not supported.")

    def _op_createMessage(self, request: Any, mailbox: str, params: dict, body: bytes):
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        draft_id = f"draft-{next(self._ids)}"
        if content_type == "text/plain":
            mime, error = _decode_mime(body)
            if error:
                return 400, {}, error
            msg = email.message_from_bytes(mime, policy=email.policy.default)
            to, cc, bcc = _header_recipients(msg)
            draft = _Draft(draft_id, mailbox, list(to), list(cc), list(bcc), mime=mime, message=msg)
        elif content_type == "application/json":
            data = json.loads(body)
            lists = [list(_json_recipients(data, k)) for k in ("toRecipients", "ccRecipients", "bccRecipients")]
            draft = _Draft(draft_id, mailbox, lists[0], lists[1], lists[2], json=data)
        else:
            return 415, {}, _graph_error("UnsupportedMediaType", "Unsupported content type.")
        self.drafts[draft_id] = draft
        return 201, {}, {"id": draft_id, "isDraft": True}

    def _draft(self, mailbox: str, params: dict) -> Optional[_Draft]:
        draft = self.drafts.get(params.get("message", ""))
        return draft if draft is not None and draft.mailbox == mailbox else None

    def _op_patchMessage(self, request: Any, mailbox: str, params: dict, body: bytes):
        draft = self._draft(mailbox, params)
        if draft is None:
            return 404, {}, _graph_error("ErrorItemNotFound", "The specified object was not found in the store.")
        changes = json.loads(body)
        for key, attr in (("toRecipients", "to"), ("ccRecipients", "cc"), ("bccRecipients", "bcc")):
            if key in changes:
                setattr(draft, attr, list(_json_recipients(changes, key)))
        return 200, {}, {"id": draft.id, "isDraft": True}

    def _op_deleteMessage(self, request: Any, mailbox: str, params: dict, body: bytes):
        if self.drafts.pop(params.get("message", ""), None) is None:
            return 404, {}, _graph_error("ErrorItemNotFound", "The specified object was not found in the store.")
        self.deleted_drafts += 1
        return 204, {}, None

    def _op_addAttachment(self, request: Any, mailbox: str, params: dict, body: bytes):
        draft = self._draft(mailbox, params)
        if draft is None:
            return 404, {}, _graph_error("ErrorItemNotFound", "The specified object was not found in the store.")
        try:
            attachment = _json_attachment(json.loads(body))
        except (ValueError, KeyError, binascii.Error):
            return 400, {}, _graph_error("ErrorInvalidRequest", "Invalid attachment.")
        if len(attachment.data) >= UPLOAD_SESSION_MINIMUM:
            return 413, {}, _graph_error("ErrorMessageSizeExceeded", "Attachments of 3 MB or more need an upload session.")
        draft.attachments.append(attachment)
        return 201, {}, {"id": f"att-{next(self._ids)}"}

    def _op_createUploadSession(self, request: Any, mailbox: str, params: dict, body: bytes):
        draft = self._draft(mailbox, params)
        if draft is None:
            return 404, {}, _graph_error("ErrorItemNotFound", "The specified object was not found in the store.")
        item = json.loads(body).get("AttachmentItem", {})
        size = int(item.get("size", 0))
        if size < UPLOAD_SESSION_MINIMUM:
            return 400, {}, _graph_error("ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                                         "Attachment size must be at least 3 MB.")
        sid = f"upload-{next(self._ids)}"
        session = _UploadSession(sid, secrets.token_urlsafe(16), mailbox, draft.id, item.get("name", "attachment"),
                                 item.get("contentType", "application/octet-stream"), size,
                                 bool(item.get("isInline", False)), item.get("contentId"))
        self._uploads[sid] = session
        expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).isoformat()
        return 201, {}, {"uploadUrl": f"{self.base}/upload/{sid}?authtoken={session.key}",
                         "expirationDateTime": expires, "nextExpectedRanges": ["0-"]}

    def _upload(self, request: Any, params: dict, body: bytes):
        session = self._uploads.get(params.get("session", ""))
        if session is None or request.args.get(b"authtoken", [b""])[0].decode() != session.key:
            return 404, {}, _graph_error("ErrorItemNotFound", "Unknown upload session.")
        if request.getHeader("authorization") is not None:
            # Graph documents that the pre-authenticated upload URL must not get a bearer token.
            return 401, {}, _graph_error("InvalidAuthenticationToken", "Upload URLs must not carry an Authorization header.")
        if request.method == b"DELETE":
            del self._uploads[session.id]
            return 204, {}, None
        content_range = request.getHeader("content-range") or ""
        try:
            unit, spec = content_range.split(" ", 1)
            span, total = spec.split("/")
            start, end = (int(x) for x in span.split("-"))
            total = int(total)
        except ValueError:
            return 400, {}, _graph_error("ErrorInvalidRequest", "Bad Content-Range.")
        if unit != "bytes" or total != session.size or start != len(session.received) or end - start + 1 != len(body):
            return 416, {}, _graph_error("ErrorInvalidRange", "Range does not continue the upload.")
        if len(body) > self.max_chunk:
            return 413, {}, _graph_error("RequestEntityTooLarge", "Chunk larger than 4 MB.")
        session.received += body
        if len(session.received) < session.size:
            return 200, {}, {"nextExpectedRanges": [f"{len(session.received)}-"]}
        del self._uploads[session.id]
        draft = self.drafts.get(session.draft_id)
        if draft is None:
            return 404, {}, _graph_error("ErrorItemNotFound", "The draft is gone.")
        draft.attachments.append(FakeAttachment(session.name, session.content_type, bytes(session.received),
                                                session.is_inline, session.content_id))
        return 201, {"location": f"{self.base}/v1.0/users/{session.mailbox}/messages/{draft.id}/attachments/x"}, None

    def _op_send(self, request: Any, mailbox: str, params: dict, body: bytes):
        if body:
            return 400, {}, _graph_error("ErrorInvalidRequest", "send takes no body.")
        draft = self._draft(mailbox, params)
        if draft is None:
            return 404, {}, _graph_error("ErrorItemNotFound", "The specified object was not found in the store.")
        if not (draft.to or draft.cc or draft.bcc):
            return 400, {}, _graph_error("ErrorInvalidRecipients", "At least one recipient isn't valid.")
        del self.drafts[draft.id]
        self._record(SentMessage(mailbox, "draft", tuple(draft.to), tuple(draft.cc), tuple(draft.bcc),
                                 mime=draft.mime, message=draft.message, attachments=draft.attachments,
                                 json=draft.json))
        return 202, {}, None

    def _record(self, message: SentMessage) -> None:
        self.sent.append(message)
        for callback in self.on_sent:
            callback(message)


class FakeGraphResource(Resource):
    """The fake's HTTP face as a twisted.web resource (served over TLS, or wrapped in StubTreq)."""

    isLeaf = True

    def __init__(self, fake: FakeGraphServer) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: Any) -> Any:
        return self.fake.handle(request)


class _TrackingSite(web_server.Site):
    """A Site that knows its open connections, so the fake can close them all on stop."""

    noisy = False

    def __init__(self, resource: Resource, fake: FakeGraphServer) -> None:
        super().__init__(resource)
        self.fake = fake

    def log(self, request: Any) -> None:
        """No access log: URLs carry mailbox names and upload keys."""

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        fake = self.fake
        fake.connections += 1
        fake._open.add(proto)
        original = proto.connectionLost

        def connection_lost(reason: Any) -> None:
            try:
                original(reason)
            finally:
                fake._connection_closed(proto)

        proto.connectionLost = connection_lost
        return proto


#: Entra endpoints under ``/<tenant>/``: path after the tenant → (operation, method; None: any).
_ENTRA_ROUTES: dict[tuple[str, ...], tuple[str, Optional[str]]] = {
    ("v2.0", ".well-known", "openid-configuration"): ("discovery", None),
    ("discovery", "v2.0", "keys"): ("keys", "GET"),
    ("oauth2", "v2.0", "token"): ("token", "POST"),
}

#: Graph endpoints under ``/v1.0/users/<mailbox>/``: (path pattern, method, operation); ``*`` is
#: any one segment, and the second segment (when there is one) is the message id.
_MAILBOX_ROUTES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("sendMail",), "POST", "sendMail"),
    (("messages",), "POST", "createMessage"),
    (("messages", "*"), "PATCH", "patchMessage"),
    (("messages", "*"), "DELETE", "deleteMessage"),
    (("messages", "*", "send"), "POST", "send"),
    (("messages", "*", "attachments"), "POST", "addAttachment"),
    (("*", "*", "attachments", "createUploadSession"), "POST", "createUploadSession"),
)


def _matches(pattern: tuple[str, ...], rest: list[str]) -> bool:
    return len(pattern) == len(rest) and all(p in ("*", r) for p, r in zip(pattern, rest, strict=True))


def _mailbox_route(method: str, rest: list[str]) -> tuple[str, dict]:
    for pattern, allowed, operation in _MAILBOX_ROUTES:
        if method == allowed and _matches(pattern, rest):
            return operation, ({"message": rest[1]} if len(rest) > 1 else {})
    return "unknown", {}


def _route(method: str, path: list[str], tenant: str) -> tuple[str, Optional[str], dict]:
    """Which operation a request is: ``(operation, mailbox or None, parameters from the path)``."""
    entra = _ENTRA_ROUTES.get(tuple(path[1:])) if len(path) == 4 else None
    if entra is not None and entra[1] in (None, method):
        return entra[0], None, {"tenant": path[0]}
    if len(path) == 2 and path[0] == "upload":
        return "upload", None, {"session": path[1]}
    if len(path) >= 4 and path[:2] == ["v1.0", "users"]:
        operation, params = _mailbox_route(method, path[3:])
        return operation, path[2].lower(), params
    return "unknown", None, {}


def _thumbprints_match(cert: Any, header: dict) -> bool:
    """The assertion's ``x5t`` / ``x5t#S256`` (those present) are ``cert``'s SHA-1 / SHA-256 thumbprints."""
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1 = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
    sha256 = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    x5t = (header.get("x5t") or "").rstrip("=") or None
    x5t256 = (header.get("x5t#S256") or "").rstrip("=") or None
    return x5t in (None, sha1) and x5t256 in (None, sha256)


def _b64url_int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _signing_jwk(issuer: str) -> dict:
    """A new RS256 signing key as one JWKS entry, with a self-signed certificate as Entra publishes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.fake-entra.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode("ascii")
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA", "use": "sig", "kid": thumbprint, "x5t": thumbprint,
        "n": _b64url_int(numbers.n), "e": _b64url_int(numbers.e),
        "x5c": [base64.b64encode(der).decode("ascii")], "issuer": issuer,
    }


def _graph_error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message,
                      "innerError": {"request-id": secrets.token_hex(8), "date": datetime.datetime.now(
                          datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")}}}


def _decode_mime(body: bytes) -> tuple[bytes, Optional[dict]]:
    try:
        return base64.b64decode(body.replace(b"\r", b"").replace(b"\n", b""), validate=True), None
    except (binascii.Error, ValueError):
        return b"", _graph_error("ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")


def _header_recipients(msg: Any) -> tuple[tuple[str, ...], ...]:
    def addresses(name: str) -> tuple[str, ...]:
        values = [str(v) for v in msg.get_all(name, [])]
        return tuple(a.lower() for _, a in email.utils.getaddresses(values) if a)

    return addresses("to"), addresses("cc"), addresses("bcc")


def _json_recipients(message: dict, key: str) -> tuple[str, ...]:
    return tuple(r["emailAddress"]["address"].lower() for r in message.get(key, []) or [])


def _json_attachment(data: dict) -> FakeAttachment:
    return FakeAttachment(data.get("name", "attachment"), data.get("contentType", "application/octet-stream"),
                          base64.b64decode(data["contentBytes"], validate=True), bool(data.get("isInline", False)),
                          data.get("contentId"))


# -- helpers for tests and the command line ---------------------------------------------------

def start_fake_graph(reactor: Any, directory: str, *, port: int = 0, interface: str = "127.0.0.1",
                     **options: Any) -> "Deferred[FakeGraphServer]":
    """
    Start a fake on ``interface:port`` (port 0 = any free port) with a new test CA in
    ``directory``.  Fires with the L{FakeGraphServer} once it listens; call ``stop()`` after.
    """
    ca = TestCA.create(directory)
    issued = ca.issue(names=(interface, "localhost") if interface != "localhost" else ("localhost", "127.0.0.1"))
    endpoint = endpoints.SSL4ServerEndpoint(
        reactor, port, _server_context(issued.cert_path, issued.key_path), interface=interface)
    return FakeGraphServer(reactor, ca, **options).listen(endpoint)


def _server_context(cert_path: str, key_path: str) -> Any:
    from twisted.internet import ssl

    with open(cert_path, "rb") as f:
        cert = f.read()
    with open(key_path, "rb") as f:
        key = f.read()
    return ssl.PrivateCertificate.loadPEM(key + cert).options()


@attrs.frozen
class ClientCertificate:
    """An app registration certificate for tests: RSA key (0600 file) and self-signed cert."""

    cert_path: str
    key_path: str
    cert_pem: bytes
    thumbprint: str


def create_client_certificate(directory: str, name: str = "graphsmtp test app",
                              passphrase: Optional[bytes] = None, valid_days: float = 7) -> ClientCertificate:
    """``valid_days`` < 0 gives a certificate that expired that many days ago."""
    os.makedirs(directory, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_after = now + datetime.timedelta(days=valid_days)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - datetime.timedelta(days=30 if valid_days < 0 else 0, hours=1))
        .not_valid_after(not_after).sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    cert_path = os.path.join(directory, "app-cert.pem")
    key_path = os.path.join(directory, "app-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return ClientCertificate(cert_path, key_path, cert_pem, certificate_thumbprint(cert))


__all__ = [
    "FakeGraphServer", "Fault", "SentMessage", "FakeAttachment", "RequestRecord", "start_fake_graph",
    "create_client_certificate", "ClientCertificate", "FakeGraphResource",
]
