"""
The AUTH command of an SMTP session: when it may be used, the challenge/response exchange
(L{gateway.smtp.auth}), the login through the ``twisted.cred`` portal, and the replies.

* AUTH is offered and accepted only with TLS active, unless the listener explicitly allows
  plaintext (``538 5.7.11`` otherwise); never twice, never inside a mail transaction.
* Malformed input never raises out of the session: every exchange ends in a reply.
* ``535 5.7.8`` for wrong credentials, ``421 4.7.0`` and close when the portal says the client
  is throttled, ``454 4.7.0`` for any other failure — logged by its type only, since its text
  could echo the credentials.
"""

from __future__ import annotations

import base64
from typing import Any, Callable, Optional, Protocol

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

from gateway.config.model import ListenerConfig
from gateway.policy.interfaces import IAuthenticatedIdentity, LoginThrottled
from gateway.smtp.auth import AuthExchange, Challenge, Ready
from gateway.smtp.session import SessionReplies


class AuthSettings(Protocol):
    """What decides whether AUTH is offered: the listener, the portal, whether TLS is on."""

    listener: ListenerConfig
    portal: Any

    def secure(self) -> bool: ...


class LoginSession(SessionReplies, Protocol):
    """What the AUTH command uses of its SMTP session (L{gateway.smtp.protocol.GatewayESMTP})."""

    listener: ListenerConfig
    portal: Any
    authenticated: bool
    transaction: Any

    @property
    def greeted(self) -> bool: ...

    def exchange_started(self, exchange: AuthExchange) -> None: ...
    def exchange_ended(self) -> None: ...
    def logged_in(self, identity: Any, logout: Callable[[], None]) -> None: ...


def auth_enabled(session: AuthSettings) -> bool:
    """The listener offers AUTH at all (a portal, and ``auth`` is not ``"none"``)."""
    return session.portal is not None and session.listener.auth != "none"


def auth_allowed_now(session: AuthSettings) -> bool:
    """AUTH may be used on this connection now: TLS is on, or the listener allows plaintext."""
    return session.secure() or session.listener.allow_plaintext_auth


def auth_refusal(session: LoginSession) -> Optional[tuple[int, str, str]]:
    """Why AUTH may not be used now, as a reply; None when it may."""
    if not auth_enabled(session):
        return 503, "5.5.1", "Authentication not enabled"
    if not session.greeted:
        return 503, "5.5.1", "Send EHLO first"
    if session.authenticated:
        return 503, "5.5.1", "Already authenticated"
    if session.transaction is not None:
        return 503, "5.5.1", "AUTH not permitted during a mail transaction"
    if not auth_allowed_now(session):
        return 538, "5.7.11", "Encryption required for requested authentication mechanism"
    return None


def auth_command(session: LoginSession, rest: bytes) -> None:
    refusal = auth_refusal(session)
    if refusal is not None:
        session.reply(*refusal)
        return
    parts = rest.split()
    if not parts or len(parts) > 2:
        session.reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        return
    mechanism = parts[0].upper().decode("ascii", "replace")
    if mechanism not in session.listener.auth_mechanisms:
        session.reply(504, "5.5.4", "Unrecognized authentication mechanism")
        return
    exchange = AuthExchange(mechanism)
    _step(session, exchange, exchange.start(parts[1] if len(parts) > 1 else None))


def auth_response(session: LoginSession, exchange: AuthExchange, line: bytes) -> None:
    """The client's line while an exchange waits for it."""
    _step(session, exchange, exchange.respond(line))


def _step(session: LoginSession, exchange: AuthExchange, step: Any) -> None:
    if isinstance(step, Challenge):
        session.exchange_started(exchange)
        session.sendLine(b"334 " + base64.b64encode(step.text))
        return
    session.exchange_ended()
    if isinstance(step, Ready):
        credentials = step.credentials
        d = maybeDeferred(session.portal.login, credentials, session.session_view(), IAuthenticatedIdentity)
        del credentials, step
        session.wait_for(d, lambda result: _succeeded(session, result), lambda reason: _failed(session, reason),
                         on_gone=_logout_result)
        return
    session.refuse(step)


def _succeeded(session: LoginSession, result: Any) -> None:
    try:
        _, identity, logout = result
    except (TypeError, ValueError):
        session.log.error("portal returned {kind} instead of (interface, identity, logout)", kind=type(result).__name__)
        session.reply(454, "4.7.0", "Temporary authentication failure")
        return
    session.logged_in(identity, logout)
    session.reply(235, "2.7.0", "Authentication successful")


def _failed(session: LoginSession, reason: Failure) -> None:
    if reason.check(LoginThrottled):
        session.reply_and_close(421, "4.7.0", f"{session.hostname} Too many failed logins, try again later")
    elif reason.check(UnauthorizedLogin):
        session.reply(535, "5.7.8", "Authentication credentials invalid")
    else:
        # Only the type: the failure's text could echo the credentials.
        session.log.error("AUTH error for {client}: {error}", client=session.client_label(), error=reason.type.__name__)
        session.reply(454, "4.7.0", "Temporary authentication failure")


def _logout_result(result: Any) -> None:
    """A login that completed after its client left: log it straight out again."""
    try:
        result[2]()
    except Exception:
        pass


__all__ = ["LoginSession", "auth_command", "auth_response", "auth_refusal", "auth_enabled", "auth_allowed_now"]
