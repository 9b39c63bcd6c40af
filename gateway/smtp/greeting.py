"""
HELO/EHLO and STARTTLS: how a client introduces itself, what the gateway offers it, and when
the connection may switch to TLS.

* The HELO/EHLO name is validated (L{gateway.smtp.addresses.parse_helo}) before it can reach a
  Received header, and the chain's connect step judges the session with it.  EHLO/HELO in the
  middle of a session acts as RSET (RFC 5321 §4.1.4).
* EHLO offers exactly what works: SIZE (the listener's limit), 8BITMIME, ENHANCEDSTATUSCODES,
  PIPELINING, STARTTLS only where it can start now, AUTH only where it may be used now.
* STARTTLS (RFC 3207) is refused with a syntax error, once TLS is active, where it is not
  configured, and inside a mail transaction; the session then starts TLS and forgets what it
  learnt before (L{gateway.smtp.protocol.GatewayESMTP.start_tls}).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import ITLSTransport

from gateway.config.model import Limits, ListenerConfig
from gateway.smtp.addresses import parse_helo
from gateway.smtp.login import auth_allowed_now, auth_enabled
from gateway.smtp.replies import verdict_refusal
from gateway.smtp.session import SessionReplies


class GreetingSession(SessionReplies, Protocol):
    """What HELO/EHLO and STARTTLS use of the SMTP session (L{gateway.smtp.protocol.GatewayESMTP})."""

    factory: Any
    transport: Any
    portal: Any
    listener: ListenerConfig
    limits: Limits
    chain: Any
    transaction: Any

    def greeting_started(self, name: str) -> None: ...
    def greeting_accepted(self) -> None: ...
    def start_tls(self, options: Any) -> None: ...


def helo_command(session: GreetingSession, rest: bytes, esmtp: bool) -> None:
    name = parse_helo(rest)
    if name is None:
        session.reply(501, "5.5.4", "Invalid HELO/EHLO name: a domain or address literal is required")
        return
    session.greeting_started(name)
    d = maybeDeferred(session.chain.on_connect, session.session_view())
    session.wait_for(d, lambda result: _greeted(session, result, esmtp))


def _greeted(session: GreetingSession, result: Any, esmtp: bool) -> None:
    refusal = verdict_refusal(result)
    if refusal is not None:
        session.log.info("refused greeting from {client}: {code} {status}", client=session.client_label(), code=refusal.code, status=refusal.status)
        session.refuse(refusal)
        return
    session.greeting_accepted()
    if not esmtp:
        session.sendLine(f"250 {session.hostname}".encode("ascii"))
        return
    lines = ehlo_lines(session)
    # One send for the whole multi-line reply: the same bytes, one pass through the reply
    # path instead of one per line.
    session.sendLine(b"\r\n".join([b"250-" + line.encode("ascii") for line in lines[:-1]]
                                   + [b"250 " + lines[-1].encode("ascii")]))


def ehlo_lines(session: GreetingSession) -> list[str]:
    """The EHLO reply's lines: the hostname, then the extensions offered right now."""
    lines = [session.hostname, f"SIZE {session.limits.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING"]
    if starttls_available(session):
        lines.append("STARTTLS")
    if auth_enabled(session) and auth_allowed_now(session):
        lines.append("AUTH " + " ".join(session.listener.auth_mechanisms))
    return lines


def starttls_available(session: GreetingSession) -> bool:
    """STARTTLS is configured here, TLS is not on yet, and the transport can start it."""
    return (
        session.listener.tls == "starttls"
        and session.factory.tls is not None
        and not session.secure()
        and ITLSTransport.providedBy(session.transport)
    )


def starttls_refusal(session: GreetingSession, rest: bytes) -> Optional[tuple[int, str, str]]:
    """Why STARTTLS may not be used now, as a reply; None when it may."""
    if rest.strip():
        return 501, "5.5.4", "Syntax: STARTTLS"
    if session.secure():
        return 503, "5.5.1", "TLS already active"
    if not starttls_available(session):
        return 502, "5.5.1", "STARTTLS not available"
    if session.transaction is not None:
        return 503, "5.5.1", "STARTTLS not permitted during a mail transaction"
    return None


def starttls_command(session: GreetingSession, rest: bytes) -> None:
    refusal = starttls_refusal(session, rest)
    if refusal is not None:
        session.reply(*refusal)
        return
    try:
        options = session.factory.tls.server_options()
    except Exception:
        session.log.failure("no TLS options for listener {listener}", listener=session.listener.name)
        session.reply(454, "4.7.0", "TLS not available due to temporary reason")
        return
    session.sendLine(b"220 2.0.0 Ready to start TLS")
    session.start_tls(options)


__all__ = ["GreetingSession", "helo_command", "ehlo_lines", "starttls_command", "starttls_refusal"]
