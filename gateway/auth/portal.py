"""
The portal the SMTP layer logs in through: a twisted.cred ``Portal`` wrapped with per-client
throttling and an audit log line for every login.

The throttle needs the client address, and behind a PROXY-protocol load balancer the real one
is only known once the PROXY header is read (L{gateway.smtp.proxy}), so it is looked up at login time:
either ``mind`` carries it (an ``IAddress``, an address string, or any object with a
``client_address`` attribute such as a L{SessionView}), or the SMTP factory gives each connection
``portal.for_client(lambda: transport.getPeer())`` and the SMTP layer calls
``login(credentials, None, IAuthenticatedIdentity)`` as usual.

Log lines carry the listener, client address, login name (escaped and shortened, since it is
client input) and outcome; never the password.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.auth.throttle import LoginThrottle, throttle_key
from gateway.policy.interfaces import LoginThrottled


def client_address_of(value: Any) -> Optional[str]:
    """The client IP from a ``mind``: an IAddress (``.host``), a string, or ``.client_address``."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    for attribute in ("client_address", "host"):
        found = getattr(value, attribute, None)
        if isinstance(found, str):
            return found
    return None


def loggable_login(credentials: Any) -> str:
    """The user name as safe log text: client input, so no control characters and bounded length."""
    name = getattr(credentials, "username", None)
    if name is None:
        return "?"
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in str(name))
    return text if len(text) <= 100 else text[:100] + "…"


class ThrottledPortal:
    """
    ``login()`` like ``Portal.login``, plus: refuse locked-out clients with L{LoginThrottled},
    delay failures more each time, and log each attempt.
    """

    log = Logger()

    def __init__(self, portal: Portal, throttle: LoginThrottle, listener: str = "") -> None:
        self.portal = portal
        self.throttle = throttle
        self.listener = listener

    def listCredentialsInterfaces(self) -> list:
        return self.portal.listCredentialsInterfaces()

    def for_client(self, get_address: Callable[[], Any]) -> "ClientPortal":
        """A per-connection portal that asks ``get_address()`` for the client at login time."""
        return ClientPortal(self, get_address)

    def login(self, credentials: Any, mind: Any, *interfaces: Any, client_address: Optional[str] = None) -> Deferred:
        address = client_address or client_address_of(mind) or "unknown"
        key = throttle_key(address)
        login = loggable_login(credentials)
        if self.throttle.is_locked_out(key):
            self.throttle.refuse()
            self.log.warn(
                "AUTH refused: too many failed logins from {client} (listener {listener}, login {login})",
                client=address, listener=self.listener, login=login,
            )
            return fail(LoginThrottled(f"too many failed logins from {address}"))
        d = self.portal.login(credentials, mind, *interfaces)

        def succeeded(result: Any) -> Any:
            self.throttle.record_success(key)
            identity = result[1] if isinstance(result, tuple) and len(result) > 1 else None
            self.log.info(
                "AUTH success: login {login} from {client} (listener {listener}){via}",
                login=getattr(identity, "login", login), client=address, listener=self.listener,
                via=" with pass-through credentials" if getattr(identity, "credential_ref", None) else "",
            )
            return result

        def failed(reason: Failure) -> Any:
            if not reason.check(UnauthorizedLogin):
                # Only the type: an exception's text could echo what the client sent.
                self.log.error(
                    "AUTH could not be checked for login {login} from {client} (listener {listener}): {error}",
                    login=login, client=address, listener=self.listener, error=reason.type.__name__,
                )
                return reason
            outcome = self.throttle.record_failure(key)
            self.log.warn(
                "AUTH failed: login {login} from {client} (listener {listener}), {failures} recent failures{lock}",
                login=login, client=address, listener=self.listener, failures=outcome.failures,
                lock="; address locked out" if outcome.locked_out else "",
            )
            if outcome.locked_out:
                return Failure(LoginThrottled(f"too many failed logins from {address}"))
            if outcome.delay <= 0:
                return reason
            return deferLater(self.throttle.clock, outcome.delay, lambda: reason)

        return d.addCallbacks(succeeded, failed)


class ClientPortal:
    """One connection's view of a L{ThrottledPortal}: knows how to find its client's address."""

    def __init__(self, portal: ThrottledPortal, get_address: Callable[[], Any]) -> None:
        self._portal = portal
        self._get_address = get_address

    def listCredentialsInterfaces(self) -> list:
        return self._portal.listCredentialsInterfaces()

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> Deferred:
        try:
            address = client_address_of(self._get_address())
        except Exception:
            address = None
        return self._portal.login(credentials, mind, *interfaces, client_address=address or client_address_of(mind))


__all__ = ["ThrottledPortal", "ClientPortal", "client_address_of", "loggable_login"]
