"""
Which tenant and app registration a message is delivered with.

Most messages use the gateway's configured tenant.  A message handed over by an Entra
pass-through login carries a ``credential_ref`` (L{gateway.spool.entry.Provenance}); an
L{ICredentialResolver} turns that reference into L{TenantCredentials}.  The default resolver
serves only the configured tenant; the auth feature supplies one that also knows stored
pass-through credentials.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Interface, implementer

from gateway.config.graph import CertificateConfig, GraphConfig
from gateway.config.secrets import Secret


@attrs.frozen
class TenantCredentials:
    """
    One app registration in one tenant, with exactly one kind of credential.

    ``label`` names the credentials in logs and health reports (``"default"`` or the
    credential reference); it is never secret.  ``key`` identifies the MSAL application that
    serves these credentials for the life of the process: a changed secret gets a new one.
    """

    tenant_id: str
    client_id: str
    authority: str
    graph_url: str
    client_secret: Optional[Secret] = None
    certificate: Optional[CertificateConfig] = None
    client_assertion_file: Optional[str] = None
    label: str = "default"

    @property
    def scope(self) -> str:
        return self.graph_url.rstrip("/") + "/.default"

    @property
    def tenant_key(self) -> tuple[str, str, str]:
        """What tenant-wide trouble (bad credentials) is tracked under."""
        return (self.authority.lower(), self.tenant_id.lower(), self.client_id.lower())

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.tenant_key + (self._material_digest(),)

    def _material_digest(self) -> str:
        h = hashlib.sha256()
        if self.client_secret is not None:
            h.update(b"secret\0" + self.client_secret.reveal().encode("utf-8"))
        if self.certificate is not None:
            h.update(b"cert\0" + self.certificate.private_key.reveal().encode("utf-8"))
            h.update(b"\0" + self.certificate.thumbprint.encode("ascii"))
            h.update(b"\0x5c" if self.certificate.send_x5c else b"\0")
        if self.client_assertion_file is not None:
            h.update(b"assertion\0" + self.client_assertion_file.encode("utf-8"))
        return h.hexdigest()[:16]


def credentials_from_config(config: GraphConfig) -> TenantCredentials:
    """The configured tenant's credentials."""
    return TenantCredentials(
        tenant_id=config.tenant_id,
        client_id=config.client_id,
        authority=config.authority,
        graph_url=config.graph_url,
        client_secret=config.client_secret,
        certificate=config.certificate,
        client_assertion_file=config.client_assertion_file,
        label="default",
    )


class UnknownCredentials(Exception):
    """
    The message names credentials that do not exist (any more).  Permanent: no retry will make
    them appear; the message fails with a clear reason instead of waiting out its lifetime.
    """

    def __init__(self, credential_ref: str) -> None:
        super().__init__(f"no delivery credentials named {credential_ref!r}")
        self.credential_ref = credential_ref


class ICredentialResolver(Interface):
    """Finds the credentials a message is to be delivered with."""

    def resolve(credential_ref: Optional[str]) -> "Deferred[TenantCredentials]":
        """
        ``None`` means the gateway's configured tenant.  Fails with L{UnknownCredentials} when
        the reference names nothing; any other failure is treated as transient.
        """


@implementer(ICredentialResolver)
@attrs.frozen
class ConfigCredentialResolver:
    """Serves the configured tenant only."""

    default: TenantCredentials

    def resolve(self, credential_ref: Optional[str]) -> "Deferred[TenantCredentials]":
        if credential_ref is None:
            return succeed(self.default)
        return fail(UnknownCredentials(credential_ref))


__all__ = [
    "TenantCredentials", "credentials_from_config", "ICredentialResolver",
    "ConfigCredentialResolver", "UnknownCredentials",
]
