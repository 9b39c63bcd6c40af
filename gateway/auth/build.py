"""
Builds SMTP AUTH for a gateway from its ``[auth]`` configuration: one set of checkers, one
throttle and one thread pool shared by every listener (an attacker switching from port 587 to
465 keeps their failure count), and one throttled portal per AUTH-enabled listener.

For the wiring::

    auth = build_auth(config.auth, config.state_dir, reactor=reactor, graph_config=config.graph)
    services += auth.services                      # start before listeners, stop after
    for listener in config.listeners:
        portal = auth.portal_for(listener)         # None when listener.auth == "none"
        chain = PolicyChain([auth.relay_policy(listener), *configured_policies])
    resolver = auth.credential_resolver(ConfigCredentialResolver(default))   # for delivery
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gateway.auth.checkers import UsersFileChecker
from gateway.auth.credential_store import EncryptedCredentialStore
from gateway.auth.entra import ITokenAcquirer
from gateway.auth.passthrough import DispatchingChecker, PassThroughChecker
from gateway.auth.portal import ThrottledPortal
from gateway.auth.realm import IdentityRealm
from gateway.auth.relay import RelayAccessPolicy
from gateway.auth.throttle import LoginThrottle
from gateway.config.auth import AuthConfig
from gateway.config.errors import ConfigError
from gateway.config.model import ListenerConfig
from gateway.config.users import UsersFileError, UsersStore
from gateway.threads import ThreadPoolService


class Authentication:
    """What AUTH is made of at run time; see the module docstring for how to wire it."""

    log = Logger()

    def __init__(
        self,
        config: AuthConfig,
        portal: Portal,
        throttle: LoginThrottle,
        users: Optional[UsersStore],
        passthrough: Optional[PassThroughChecker],
        credential_store: Optional[EncryptedCredentialStore],
        services: list,
        endpoints: tuple[str, str],
        threadpool: Optional[ThreadPool] = None,
    ) -> None:
        self.config = config
        self.portal = portal
        self.throttle = throttle
        self.users = users
        self.passthrough = passthrough
        self.credential_store = credential_store
        self.services = services
        self._endpoints = endpoints
        #: The (running) pool bcrypt checks use; a SIGHUP reload builds new checkers on it.
        self.threadpool = threadpool

    def portal_for(self, listener: ListenerConfig) -> Optional[ThrottledPortal]:
        """The portal for one listener (``None`` when it does not offer AUTH)."""
        if listener.auth == "none":
            return None
        if not self.config.has_checkers:
            raise ConfigError(
                f"listener.{listener.name}.auth",
                f"is \"{listener.auth}\" but [auth] has no users_file and pass-through is not enabled",
            )
        if listener.allow_plaintext_auth:
            self.log.warn(
                "listener {listener} accepts AUTH without TLS (allow_plaintext_auth): passwords cross "
                "the network in clear; use it on loopback only",
                listener=listener.name,
            )
        return ThrottledPortal(self.portal, self.throttle, listener.name)

    def relay_policy(self, listener: ListenerConfig) -> RelayAccessPolicy:
        """The policy to put first in the listener's chain."""
        return RelayAccessPolicy(listener)

    def credential_resolver(self, fallback: Any) -> Any:
        """
        The delivery side's ``ICredentialResolver``: pass-through references from the store,
        everything else from ``fallback``.  Without pass-through this is ``fallback`` itself.
        """
        if self.credential_store is None:
            return fallback
        from gateway.auth.graph_adapter import PassThroughCredentialResolver
        return PassThroughCredentialResolver(self.credential_store, fallback, *self._endpoints)

    def stats(self) -> dict:
        """Counters for the status page (no logins, no addresses)."""
        return self.throttle.stats()


def users_checker(config: AuthConfig, reactor: Any,
                  threadpool: ThreadPool) -> tuple[Optional[UsersStore], Optional[UsersFileChecker]]:
    """
    The users file (``[auth] users_file``) and its checker, hashing on ``threadpool``; (None,
    None) without one.  Start-up and SIGHUP read the file here, so a broken file is the same
    L{ConfigError} naming ``auth.users_file`` in both.
    """
    if config.users_file is None:
        return None, None
    try:
        users = UsersStore(config.users_file)
    except UsersFileError as e:
        raise ConfigError("auth.users_file", str(e)) from None
    return users, UsersFileChecker(users, reactor, threadpool)


def build_auth(
    config: AuthConfig,
    state_dir: str,
    *,
    reactor: Any,
    clock: Optional[IReactorTime] = None,
    threadpool: Optional[ThreadPool] = None,
    token_acquirer: Optional[ITokenAcquirer] = None,
    graph_config: Any = None,
) -> Authentication:
    """
    Build AUTH.  ``threadpool`` (for bcrypt and credential-store writes) is created and managed
    here when not given.  Pass-through needs a token source: ``token_acquirer`` (tests), or else
    a private TokenProviders with its own MSAL pool is made.  Problems are L{ConfigError}s naming the setting.
    """
    clock = clock or reactor
    services: list = []
    if threadpool is None:
        threadpool = ThreadPool(1, config.hash_threads, "graphsmtp-auth")
        services.append(ThreadPoolService.wrapping(threadpool))

    users, checker = users_checker(config, reactor, threadpool)

    passthrough = None
    store = None
    from gateway.auth.graph_adapter import default_endpoints
    endpoints = default_endpoints(graph_config, config.passthrough.login_host, config.passthrough.graph_url)
    if config.passthrough.enabled:
        store = EncryptedCredentialStore.open(
            config.store_directory(state_dir), config.key_file(state_dir), reactor, threadpool,
        )
        if token_acquirer is None:
            from gateway.auth.graph_adapter import TokenProvidersAcquirer
            from gateway.delivery.graph.token import TokenProviders
            msal_pool = ThreadPool(1, 2, "graphsmtp-auth-msal")
            services.append(ThreadPoolService.wrapping(msal_pool))
            verify = getattr(graph_config, "verify", None)
            token_providers = TokenProviders(reactor, msal_pool, clock=clock, verify=verify)
            token_acquirer = TokenProvidersAcquirer(token_providers, clock, *endpoints)
        passthrough = PassThroughChecker(
            token_acquirer, store, clock,
            allowed_tenants=config.passthrough.allowed_tenants,
            delimiters=config.passthrough.delimiters,
            allowed_senders=config.passthrough.allowed_senders,
        )

    portal = Portal(IdentityRealm(), [DispatchingChecker(passthrough, checker)])
    throttle = LoginThrottle(clock, config.throttle)
    return Authentication(config, portal, throttle, users, passthrough, store, services, endpoints, threadpool)


__all__ = ["Authentication", "build_auth", "users_checker"]
