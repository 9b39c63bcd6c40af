"""
The seams between pass-through AUTH and the Graph delivery side (gateway.delivery.graph).

- L{TokenProvidersAcquirer}: checks a pass-through login by asking the delivery side's MSAL
  token providers for a token, so a login proves exactly what delivery will need.
- L{PassThroughCredentialResolver}: the delivery side's ``ICredentialResolver`` that also knows
  the pass-through credentials kept in the encrypted store, so a spooled message's
  ``credential_ref`` resolves after a restart.

Imports of the delivery side happen inside the functions: the SMTP/auth side must not depend on
Graph being installed or configured (capture-only gateways use pass-through logins too).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.auth.credential_store import EncryptedCredentialStore
from gateway.auth.entra import (
    AcquiredToken,
    EntraAppCredentials,
    InvalidAppCredentials,
    ITokenAcquirer,
)

DEFAULT_LOGIN_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com"


def tenant_credentials(app: EntraAppCredentials, login_host: str, graph_url: str) -> Any:
    from gateway.delivery.graph.credentials import TenantCredentials
    return TenantCredentials(
        tenant_id=app.tenant_id,
        client_id=app.client_id,
        authority=f"{login_host.rstrip('/')}/{app.tenant_id}",
        graph_url=graph_url,
        client_secret=app.client_secret,
        label=app.credential_ref,
    )


@implementer(ITokenAcquirer)
class TokenProvidersAcquirer:
    """``ITokenAcquirer`` over ``gateway.delivery.graph.token.TokenProviders``."""

    def __init__(self, providers: Any, clock: IReactorTime, login_host: str = DEFAULT_LOGIN_HOST, graph_url: str = DEFAULT_GRAPH_URL) -> None:
        self.providers = providers
        self.clock = clock
        self.login_host = login_host
        self.graph_url = graph_url

    def acquire(self, credentials: EntraAppCredentials) -> Deferred:
        from gateway.delivery.graph.token import TokenError
        tenant = tenant_credentials(credentials, self.login_host, self.graph_url)
        d = self.providers.acquire(tenant)

        def issued(token: Any) -> AcquiredToken:
            return AcquiredToken(expires_in=max(token.expires_at - self.clock.seconds(), 0.0))

        def refused(reason: Failure) -> Any:
            error = reason.value
            if isinstance(error, TokenError) and error.is_config:
                # Do not keep an MSAL application around for every wrong guess.
                self.providers.forget(tenant)
                raise InvalidAppCredentials(error.code)
            return reason

        return d.addCallbacks(issued, refused)


def default_endpoints(graph_config: Any, login_host: Optional[str], graph_url: Optional[str]) -> tuple[str, str]:
    """Pass-through logins use the configured cloud unless [auth.passthrough] says otherwise."""
    if graph_config is not None:
        from urllib.parse import urlsplit
        parts = urlsplit(graph_config.authority)
        login_host = login_host or f"{parts.scheme}://{parts.netloc}"
        graph_url = graph_url or graph_config.graph_url
    return login_host or DEFAULT_LOGIN_HOST, graph_url or DEFAULT_GRAPH_URL


class PassThroughCredentialResolver:
    """
    ``ICredentialResolver`` (gateway.delivery.graph.credentials): ``entra:`` references come from
    the encrypted store, everything else (``None`` = the configured tenant) from ``fallback``.
    A reference with nothing stored is ``UnknownCredentials`` (permanent); stored credentials
    that cannot be decrypted fail transiently, so mail waits while an admin restores the key.
    """

    def __init__(self, store: EncryptedCredentialStore, fallback: Any, login_host: str = DEFAULT_LOGIN_HOST, graph_url: str = DEFAULT_GRAPH_URL) -> None:
        from zope.interface import alsoProvides

        from gateway.delivery.graph.credentials import ICredentialResolver
        alsoProvides(self, ICredentialResolver)
        self.store = store
        self.fallback = fallback
        self.login_host = login_host
        self.graph_url = graph_url

    def resolve(self, credential_ref: Optional[str]) -> Deferred:
        from gateway.delivery.graph.credentials import UnknownCredentials
        if credential_ref is None or not credential_ref.startswith("entra:"):
            if self.fallback is None:
                from twisted.internet.defer import fail
                return fail(UnknownCredentials(credential_ref or "default"))
            return self.fallback.resolve(credential_ref)
        d = self.store.resolve(credential_ref)

        def missing(reason: Failure) -> Any:
            if reason.check(KeyError):
                raise UnknownCredentials(credential_ref)
            return reason

        d.addCallbacks(lambda app: tenant_credentials(app, self.login_host, self.graph_url), missing)
        return d


__all__ = ["TokenProvidersAcquirer", "PassThroughCredentialResolver", "tenant_credentials", "default_endpoints"]
