"""
Values and interfaces shared by the Entra pass-through checker, the credential store and the
token acquisition that backs them.

The pass-through login *is* an app registration: the AUTH user name names the tenant and the
app (client id), the password is one of that app's client secrets.  Nothing here talks to
Entra; L{ITokenAcquirer} is the seam to the delivery side's MSAL token provider.
"""

from __future__ import annotations

import re
from typing import Optional

import attrs
from zope.interface import Interface

from gateway.config.secrets import Secret

_REF = re.compile(r"^entra:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


@attrs.frozen(repr=False)
class EntraAppCredentials:
    """One app registration's client-secret credentials.  ``repr`` never shows the secret."""

    tenant_id: str
    client_id: str
    client_secret: Secret

    @property
    def credential_ref(self) -> str:
        return credential_ref(self.tenant_id, self.client_id)

    def __repr__(self) -> str:
        return f"EntraAppCredentials(tenant_id={self.tenant_id!r}, client_id={self.client_id!r})"


def credential_ref(tenant_id: str, client_id: str) -> str:
    """The name spooled messages carry (``Provenance.credential_ref``): no secret in it."""
    return f"entra:{tenant_id}:{client_id}"


def parse_credential_ref(ref: str) -> Optional[tuple[str, str]]:
    """``(tenant_id, client_id)`` for a pass-through credential_ref, else ``None``."""
    m = _REF.match(ref or "")
    return (m.group(1), m.group(2)) if m else None


@attrs.frozen
class AcquiredToken:
    """A token was issued; ``expires_in`` seconds of validity.  The token itself is not kept."""

    expires_in: float


class InvalidAppCredentials(Exception):
    """Entra refused the credentials (unknown tenant/app, wrong or expired secret): a 535."""


class ITokenAcquirer(Interface):
    """Gets an app-only Graph token for given credentials (MSAL in a thread pool)."""

    def acquire(credentials: EntraAppCredentials):
        """
        Deferred firing with L{AcquiredToken}; fails with L{InvalidAppCredentials} when Entra
        refuses the credentials and with any other exception for temporary trouble (token
        endpoint unreachable, 5xx, timeout).
        """


class ICredentialSource(Interface):
    """Looks up pass-through credentials by ``credential_ref`` for delivery, across restarts."""

    def resolve(ref: str):
        """Deferred firing with L{EntraAppCredentials}; fails with KeyError for an unknown ref."""


__all__ = [
    "EntraAppCredentials", "credential_ref", "parse_credential_ref", "AcquiredToken",
    "InvalidAppCredentials", "ITokenAcquirer", "ICredentialSource",
]
