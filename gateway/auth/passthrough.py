"""
Entra pass-through AUTH: the login names an app registration, the password is its client secret,
and the login succeeds only if Entra issues a token for them.

User name syntax: ``<tenant><delimiter><client>[.anything]``.  Tenant and client are GUIDs,
written either in the usual ``8-4-4-4-12`` form or as 22-character base64url (the 16 bytes in
RFC 4122 order, which keeps long names under old devices' field limits).  The delimiter is one
of the configured characters (``@``, ``:`` or ``|``); the ``.anything`` suffix is ignored for
authentication (it lets an admin tell devices apart in the logs).

A successful check is cached for the token's lifetime under a keyed hash of (tenant, client,
secret), so the secret itself is not a dictionary key and a changed secret is checked again.
The working secret is handed to the credential store, and the session's L{Identity} carries
``credential_ref`` so its messages are delivered with that tenant's credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Iterable, Optional

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.auth.checkers import decode_login
from gateway.auth.entra import (
    EntraAppCredentials,
    InvalidAppCredentials,
    ITokenAcquirer,
)
from gateway.config.logins import DEFAULT_DELIMITERS, PassThroughName, names_of, parse_passthrough_name
from gateway.config.secrets import Secret
from gateway.policy.interfaces import Identity

# Re-check a little before Entra would: a message accepted at the end of the cache lifetime
# still finds a usable secret at delivery.
CACHE_MARGIN = 300.0
MAX_SECRET_LENGTH = 1024


class TemporaryAuthFailure(Exception):
    """The credentials could not be checked right now (Entra unreachable): 454 4.7.0, not 535."""


@attrs.define
class _CacheEntry:
    expires_at: float


@implementer(ICredentialsChecker)
class PassThroughChecker:
    """
    The avatar id is ``Identity(login=<user name>, allowed_senders=..., credential_ref=...)``.
    ``allowed_tenants`` limits which tenants may log in (``("*",)`` for any).
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        acquirer: ITokenAcquirer,
        store: Any,
        clock: IReactorTime,
        allowed_tenants: Iterable[str],
        delimiters: Iterable[str] = DEFAULT_DELIMITERS,
        allowed_senders: tuple[str, ...] = (),
    ) -> None:
        self.acquirer = acquirer
        self.store = store
        self.clock = clock
        self.allowed_tenants = frozenset(t.lower() for t in allowed_tenants)
        self.delimiters = tuple(delimiters)
        self.allowed_senders = tuple(allowed_senders)
        self._salt = os.urandom(32)  # per process: cache keys are useless outside it
        self._cache: dict[bytes, _CacheEntry] = {}
        self._pending: dict[bytes, list[Deferred]] = {}

    def parse(self, username: str) -> Optional[PassThroughName]:
        return parse_passthrough_name(username, self.delimiters)

    def _tenant_allowed(self, tenant: str) -> bool:
        return "*" in self.allowed_tenants or tenant in self.allowed_tenants

    def _cache_key(self, name: PassThroughName, secret: str) -> bytes:
        message = f"{name.tenant_id}\0{name.client_id}\0{secret}".encode("utf-8")
        return hmac.new(self._salt, message, hashlib.sha256).digest()

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        try:
            login = decode_login(credentials.username)
        except UnauthorizedLogin:
            return fail(UnauthorizedLogin())
        name = self.parse(login)
        raw: Any = credentials.password
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                return fail(UnauthorizedLogin())
        password: str = raw
        if name is None or not password or len(password) > MAX_SECRET_LENGTH:
            return fail(UnauthorizedLogin())
        if not self._tenant_allowed(name.tenant_id):
            self.log.warn("pass-through login for tenant {tenant} refused: not in allowed_tenants", tenant=name.tenant_id)
            return fail(UnauthorizedLogin())
        app = EntraAppCredentials(name.tenant_id, name.client_id, Secret(password, source="SMTP AUTH"))
        identity = Identity(login=login, allowed_senders=self.allowed_senders, credential_ref=app.credential_ref,
                            names=names_of(login, name))
        key = self._cache_key(name, password)

        entry = self._cache.get(key)
        if entry is not None:
            if entry.expires_at > self.clock.seconds():
                # The store write is a no-op when unchanged; it also re-arms the store after a
                # restart of the store's in-memory cache.
                return self.store.remember(app).addCallback(lambda _: identity)
            del self._cache[key]

        waiter: Deferred = Deferred()
        if key in self._pending:
            self._pending[key].append(waiter)
            return waiter.addCallback(lambda _: identity)
        self._pending[key] = [waiter]
        self._check(key, app)
        return waiter.addCallback(lambda _: identity)

    def _check(self, key: bytes, app: EntraAppCredentials) -> None:
        d = self.acquirer.acquire(app)

        def issued(token: Any) -> Deferred:
            lifetime = max(float(getattr(token, "expires_in", 0.0)) - CACHE_MARGIN, 0.0)
            if lifetime > 0:
                self._cache[key] = _CacheEntry(self.clock.seconds() + lifetime)
            return self.store.remember(app)

        def refused(reason: Any) -> Any:
            if reason.check(InvalidAppCredentials):
                raise UnauthorizedLogin()
            self.log.failure("pass-through token check failed for {ref}", reason, ref=app.credential_ref)
            raise TemporaryAuthFailure("cannot check pass-through credentials now")

        d.addCallbacks(issued, refused)

        def finish(result: Any) -> None:
            for waiter in self._pending.pop(key, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        d.addBoth(finish)


@implementer(ICredentialsChecker)
class DispatchingChecker:
    """
    One ``Portal`` holds one checker per credentials interface, so the users file and the
    pass-through checker share this front: a user name in pass-through syntax goes to
    pass-through, everything else to the users file.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passthrough: Optional[PassThroughChecker], users: Optional[ICredentialsChecker]) -> None:
        self.passthrough = passthrough
        self.users = users

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        if self.passthrough is not None:
            try:
                login = decode_login(credentials.username)
            except UnauthorizedLogin:
                return fail(UnauthorizedLogin())
            if self.passthrough.parse(login) is not None:
                return self.passthrough.requestAvatarId(credentials)
        if self.users is not None:
            return self.users.requestAvatarId(credentials)
        return fail(UnauthorizedLogin())


__all__ = [
    "PassThroughChecker", "DispatchingChecker", "PassThroughName", "parse_passthrough_name",
    "TemporaryAuthFailure", "DEFAULT_DELIMITERS",
]
