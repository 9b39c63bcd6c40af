"""
App-only access tokens from Entra through MSAL, without blocking the reactor.

MSAL is synchronous (requests) and even its constructor talks to the network, so every MSAL
call runs in a dedicated small thread pool.  One ConfidentialClientApplication lives per
credential set for the life of the process (MSAL's own token cache sits in it); concurrent
cache misses are coalesced into one token request; the last token is also kept here so the
common case (a valid token) costs no thread hop at all.

Failures are sorted into two kinds, because they need opposite handling: ``config`` (wrong
secret, unknown tenant, missing consent: retrying cannot help until an admin acts; shout, keep
the mail queued, pause the tenant) and ``transient`` (network, Entra busy: retry soon).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.delivery.graph.credentials import TenantCredentials

#: MSAL's well-known login hosts (``WELL_KNOWN_AUTHORITY_HOSTS`` in msal/authority.py): instance
#: discovery is only meaningful for them.
WELL_KNOWN_HOSTS = frozenset({
    "login.microsoftonline.com", "login.chinacloudapi.cn", "login-us.microsoftonline.com",
    "login.microsoftonline.us",
})

TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})

#: Codes the gateway itself gives failures Entra did not describe (see classify_exception).
_OWN_CODES = frozenset({"network", "not_json", "tls", "credential", "authority", "internal", "no_result"})

#: Refresh a token this long before it expires (MSAL uses the same margin).
EXPIRY_MARGIN = 300.0


class TokenError(Exception):
    """
    No token.  ``kind`` is ``"config"`` (fix the configuration) or ``"transient"`` (try later);
    ``code`` is Entra's error / AADSTS code when there is one.  The text never includes
    credential material: it is built from Entra's error code and the first line of its
    description only.
    """

    def __init__(self, kind: str, code: str, description: str) -> None:
        description = clean_description(code, description)
        # The gateway's own codes (http_503, network, ...) say nothing the description does not.
        own = code in _OWN_CODES or code.startswith("http_")
        super().__init__(description if own and description else f"{code}: {description}" if description else code)
        self.kind = kind
        self.code = code
        self.description = description

    @property
    def is_config(self) -> bool:
        return self.kind == "config"


@attrs.frozen(repr=False)
class AccessToken:
    """A bearer token.  Never printed: ``repr`` shows only expiry and source."""

    _value: str = attrs.field(alias="value")
    expires_at: float
    source: str = "identity_provider"

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<AccessToken expires_at={self.expires_at:.0f} source={self.source}>"

    __str__ = __repr__


@attrs.define(eq=False)
class _Provider:
    """The per-credential state: MSAL app (built lazily in a thread), last token, waiters."""

    app: Any = None
    token: Optional[AccessToken] = None
    waiters: Optional[list] = None


class TokenProviders:
    """
    Hands out tokens for any L{TenantCredentials}.

    ``threadpool`` must be a dedicated, started ThreadPool (1-2 threads): not the reactor's,
    which also serves DNS.  ``verify`` is a CA bundle path for proxies and tests (TLS
    verification is never turned off); ``proxies`` a requests-style mapping; ``timeout``
    bounds every MSAL HTTP call.  ``app_factory`` defaults to
    ``msal.ConfidentialClientApplication`` and exists for tests.

    H4 (pass-through logins) validates a credential with ``acquire(credentials)``: it fires
    with an L{AccessToken} or fails with L{TokenError} (``kind == "config"`` means the
    credential is wrong).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        threadpool: Any,
        *,
        clock: Optional[IReactorTime] = None,
        verify: Optional[str] = None,
        proxies: Optional[dict] = None,
        timeout: float = 30.0,
        app_factory: Optional[Callable[..., Any]] = None,
    ) -> None:
        self._reactor = reactor
        self._pool = threadpool
        self._clock = clock or reactor
        self._verify = verify
        self._proxies = proxies
        self._timeout = timeout
        self._app_factory = app_factory
        self._providers: dict[tuple, _Provider] = {}
        self._sessions: list = []

    def acquire(self, credentials: TenantCredentials) -> "Deferred[AccessToken]":
        """A token for ``credentials``: from memory if still fresh, else from MSAL (single flight)."""
        provider = self._providers.setdefault(credentials.key, _Provider())
        token = provider.token
        if token is not None and self._clock.seconds() < token.expires_at - EXPIRY_MARGIN:
            return succeed(token)
        result: Deferred = Deferred()
        if provider.waiters is not None:
            provider.waiters.append(result)
            return result
        provider.waiters = [result]
        d = deferToThreadPool(self._reactor, self._pool, self._acquire_blocking, provider, credentials)
        d.addBoth(self._finished, provider, credentials)
        return result

    def evict(self, credentials: TenantCredentials, token: Optional[AccessToken] = None) -> "Deferred[None]":
        """
        Forget a token Graph refused (401): here and in MSAL's cache, so the next acquire asks
        Entra.  When ``token`` is given and a newer one has already replaced it, nothing happens.
        """
        provider = self._providers.get(credentials.key)
        if provider is None:
            return succeed(None)
        if token is not None and provider.token is not None and provider.token.reveal() != token.reveal():
            return succeed(None)
        provider.token = None
        app = provider.app
        if app is None:
            return succeed(None)
        d = deferToThreadPool(self._reactor, self._pool, app.remove_tokens_for_client)
        d.addErrback(lambda f: self.log.warn("could not evict cached token for {label}: {err}",
                                             label=credentials.label, err=f.getErrorMessage()))
        d.addCallback(lambda _: None)
        return d

    def forget(self, credentials: TenantCredentials) -> None:
        """Drop the MSAL application for credentials that turned out wrong (validation path)."""
        provider = self._providers.get(credentials.key)
        if provider is not None and provider.waiters is None:
            del self._providers[credentials.key]

    def acquire_blocking(self, credentials: TenantCredentials, now: Callable[[], float]) -> AccessToken:
        """
        A token in the calling thread, for command-line tools without a reactor
        (``graphsmtp-config check --online``): the same MSAL application, session settings and
        error classification as L{acquire}.  Raises L{TokenError}.
        """
        provider = self._providers.setdefault(credentials.key, _Provider())
        value, expires_in, source = self._acquire_blocking(provider, credentials)
        return AccessToken(value, now() + expires_in, source)

    # -- in the MSAL thread -------------------------------------------------------------

    def _acquire_blocking(self, provider: _Provider, credentials: TenantCredentials) -> tuple[str, float, str]:
        try:
            if provider.app is None:
                provider.app = self._build_app(credentials)
            result = provider.app.acquire_token_for_client(scopes=[credentials.scope])
        except TokenError:
            raise
        except Exception as e:  # noqa: BLE001 - every MSAL/requests failure is classified
            raise classify_exception(e) from None
        if not isinstance(result, dict):
            raise TokenError("transient", "no_result", "MSAL returned no result")
        if "access_token" in result:
            try:
                expires_in = float(result.get("expires_in", 3599))
            except (TypeError, ValueError):
                expires_in = 3599.0
            return result["access_token"], expires_in, str(result.get("token_source", "identity_provider"))
        raise classify_result(result)

    def _build_app(self, credentials: TenantCredentials) -> Any:
        host = (urlsplit(credentials.authority).hostname or "").lower()
        kwargs: dict[str, Any] = dict(
            client_credential=msal_credential(credentials),
            authority=credentials.authority,
            timeout=self._timeout,
            azure_region=False,
        )
        if host not in WELL_KNOWN_HOSTS:
            kwargs["instance_discovery"] = False
        factory = self._app_factory
        if factory is not None:
            # A test's factory gets MSAL's own settings and may build its own session.
            if self._verify:
                kwargs["verify"] = self._verify
            if self._proxies:
                kwargs["proxies"] = self._proxies
            return factory(credentials.client_id, **kwargs)
        import msal

        session = msal_http_session(self._verify, self._proxies, self._timeout)
        self._sessions.append(session)
        return msal.ConfidentialClientApplication(credentials.client_id, http_client=session, **kwargs)

    def close(self) -> None:
        """Close MSAL's HTTP sessions (keep-alive connections to the login host) at shutdown."""
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # -- back in the reactor ------------------------------------------------------------

    def _finished(self, result: Any, provider: _Provider, credentials: TenantCredentials) -> None:
        waiters, provider.waiters = provider.waiters or [], None
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, TokenError):
                error = TokenError("transient", "internal", type(error).__name__)
            for d in waiters:
                d.errback(Failure(TokenError(error.kind, error.code, error.description)))
            return
        value, expires_in, source = result
        token = AccessToken(value, self._clock.seconds() + expires_in, source)
        provider.token = token
        for d in waiters:
            d.callback(token)


def msal_http_session(verify: Optional[str], proxies: Optional[dict], timeout: float) -> Any:
    """
    The requests session MSAL uses.  Ours, because requests lets ``REQUESTS_CA_BUNDLE`` from the
    environment override a session's ``verify`` (psf/requests#3829): with ``graph.ca_bundle``
    set, that bundle must win.  Every call gets the configured timeout; one retry on connection
    errors, as MSAL's own default session does.
    """
    import requests
    from requests.adapters import HTTPAdapter

    class _Session(requests.Session):
        def request(self, method: str, url: str, **kw: Any) -> Any:  # type: ignore[override]
            if verify:
                kw["verify"] = verify
            kw.setdefault("timeout", timeout)
            if kw.get("timeout") is None:
                kw["timeout"] = timeout
            return super().request(method, url, **kw)

    session = _Session()
    session.mount("https://", HTTPAdapter(max_retries=1))
    if verify:
        session.verify = verify
    if proxies:
        session.proxies.update(proxies)
    return session


def msal_credential(credentials: TenantCredentials) -> Any:
    """The ``client_credential`` argument MSAL wants for these credentials."""
    if credentials.client_secret is not None:
        return credentials.client_secret.reveal()
    cert = credentials.certificate
    if cert is not None:
        value: dict[str, Any] = {"private_key": cert.private_key.reveal(), "thumbprint": cert.thumbprint}
        if cert.passphrase is not None:
            value["passphrase"] = cert.passphrase.reveal()
        if cert.send_x5c:
            value["public_certificate"] = cert.certificate_pem
        return value
    path = credentials.client_assertion_file
    if path is not None:
        def read_assertion() -> str:
            # Re-read on every token request: federated tokens (AKS, GitHub OIDC) rotate.
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        return {"client_assertion": read_assertion}
    raise TokenError("config", "credential", "no client secret, certificate or client assertion configured")


def classify_result(result: dict) -> TokenError:
    """An MSAL error dict → TokenError.  Unknown 4xx-style errors count as configuration trouble."""
    error = str(result.get("error") or "unknown_error")
    codes = result.get("error_codes") or []
    try:
        codes = [int(c) for c in codes]
    except (TypeError, ValueError):
        codes = []
    description = _first_line(str(result.get("error_description") or ""))
    code = f"AADSTS{codes[0]}" if codes else error
    if error in TRANSIENT_ERRORS:
        return TokenError("transient", code, description)
    # Configuration errors (invalid_client, AADSTS7000215 a wrong secret...) and anything else Entra
    # answers with an error body: retrying the same request gives the same answer (MSAL even
    # replays 400s from its cache for 60 s), so an admin has to look.
    return TokenError("config", code, description)


def classify_exception(e: BaseException) -> TokenError:
    """An exception out of MSAL (or requests underneath it) → TokenError."""
    for classify in (_requests_failure, _msal_http_failure, _unusable_answer_or_credential):
        found = classify(e)
        if found is not None:
            return found
    return TokenError("transient", "internal", type(e).__name__)


def _refused_by_login_host(status: int) -> bool:
    """A 4xx other than timeout/throttling: the same request would be refused again."""
    return 400 <= status < 500 and status not in (408, 429)


def _requests_failure(e: BaseException) -> Optional[TokenError]:
    """The exceptions of requests, which MSAL's HTTP layer uses underneath."""
    import requests  # msal depends on it; imported lazily like msal itself

    if isinstance(e, requests.exceptions.SSLError):
        return TokenError("config", "tls", "TLS verification of the login host failed (check graph.ca_bundle)")
    if isinstance(e, requests.exceptions.HTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status is not None and _refused_by_login_host(status):
            return TokenError("config", f"http_{status}", "the login host refused the request")
        return TokenError("transient", f"http_{status or 'error'}", "the login host answered with an error")
    if isinstance(e, requests.exceptions.RequestException):
        return TokenError("transient", "network", f"cannot reach the login host ({type(e).__name__})")
    return None


def _msal_http_failure(e: BaseException) -> Optional[TokenError]:
    """
    MSAL's own HTTP layer (1.32+) raises MsalServiceError("HTTP Error: 503") for any error
    status it cannot parse as an OAuth error: a login host that is down or overloaded, not a
    credential problem.
    """
    status = _msal_http_status(e)
    if status is None:
        return None
    if _refused_by_login_host(status):
        return TokenError("config", f"http_{status}", "the login host refused the request")
    return TokenError("transient", f"http_{status}", f"the login host answered HTTP {status}")


def _unusable_answer_or_credential(e: BaseException) -> Optional[TokenError]:
    if isinstance(e, json.JSONDecodeError):
        # MSAL re-raises when the token endpoint answers 4xx with a body that is not JSON: an
        # HTML 429 or proxy page, a cut-off answer.  Nothing says the credential is wrong.
        return TokenError("transient", "not_json", "the login host answered with something that is not JSON")
    if not isinstance(e, ValueError):
        return None
    if "authority" in str(e).lower():
        return TokenError("config", "authority", "tenant discovery failed: unknown tenant or wrong authority")
    return TokenError("config", "credential", "the credential could not be used (wrong key or format)")


def _msal_http_status(e: BaseException) -> Optional[int]:
    """The HTTP status of an ``msal.exceptions.MsalServiceError`` raised by MSAL's HTTP layer."""
    if type(e).__name__ != "MsalServiceError":
        return None
    match = re.search(r"HTTP Error: (\d{3})", str(e.args[0]) if e.args else "")
    return int(match.group(1)) if match else None


def clean_description(code: str, description: str) -> str:
    """
    Entra's description without what the message around it already says: its own
    ``AADSTSnnn:`` prefix (the code is printed once, in front), the trailing full stop (the text
    is embedded in longer sentences) and the trace/correlation ids after the first sentence.
    """
    text = _first_line(description)
    match = re.match(r"(AADSTS\d+)\s*:\s*", text)
    if match and (match.group(1) == code or code.startswith("AADSTS")):
        text = text[match.end():]
    text = re.split(r"\s+Trace ID:", text, maxsplit=1)[0]
    return text.strip().rstrip(".").strip()


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:300]


__all__ = ["TokenProviders", "AccessToken", "TokenError", "msal_credential", "classify_result", "classify_exception"]
