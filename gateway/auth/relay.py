"""
Who may relay through a listener, and as whom: the policy the wiring puts first in every
listener's chain.

Relay access (no open relay, ARCHITECTURE invariant 8):

- an authenticated session may relay;
- without AUTH, only clients in the listener's ``trusted_networks`` may, and only when the
  listener's ``auth`` is not ``"required"``;
- everyone else gets ``530 5.7.0`` when the listener offers AUTH (so the client knows to log
  in) and ``554 5.7.1`` when it does not.

Sender identity: the patterns of the login (``Identity.allowed_senders``) or, for an
unauthenticated trusted-network session, the listener's ``trusted_senders``, bound the envelope
sender (at MAIL FROM) *and* every address in the From, Sender, Resent-From and Resent-Sender
headers (at end of data), so a permitted envelope cannot carry a forged From.  Empty patterns
mean no restriction from here.

The header section is read through the one mail grammar (L{gateway.mail}), the same reading the
SMTP layer records the sending mailbox from and the Graph deliverer executes; a section the
grammar refuses (ambiguous, malformed, over a limit) is refused here as well, with its reason,
whatever the patterns, so no guard configuration can let it through.

Access is checked again at RCPT and at end of data: if the SMTP layer ever let a refused MAIL
through, the message would still not get out.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger
from zope.interface import implementer

from gateway.config.errors import ConfigError
from gateway.config.model import ListenerConfig
from gateway.mail.errors import MailRefusal
from gateway.mail.patterns import PatternError, SenderPattern
from gateway.policy.addresses import client_ip, message_header
from gateway.policy.interfaces import (
    Continue,
    IPolicy,
    MessageView,
    Reject,
    SessionView,
)

_CONTINUE = Continue()


def _shown(address: str) -> str:
    """Client-supplied text in a reply: printable ASCII only, bounded."""
    text = "".join(c if 32 < ord(c) < 127 else "?" for c in address)
    return text if len(text) <= 200 else text[:200] + "..."


@implementer(IPolicy)
class RelayAccessPolicy:
    """Relay access and sender identity for one listener (see the module docstring)."""

    log = Logger()

    def __init__(self, listener: ListenerConfig, log: Optional[Logger] = None) -> None:
        if log is not None:
            self.log = log
        self.listener = listener
        try:
            self.trusted_senders = tuple(SenderPattern.parse(p) for p in listener.trusted_senders)
        except PatternError as e:
            raise ConfigError(f"listener.{listener.name}.trusted_senders", str(e)) from None
        self.auth_offered = listener.auth in ("optional", "required")
        self._trust_cache: Optional[tuple[str, bool]] = None

    def is_trusted(self, address: str) -> bool:
        # Asked at MAIL, RCPT and end of data for the same client: remember the last answer
        # instead of parsing the address again each time.
        cached = self._trust_cache
        if cached is not None and cached[0] == address:
            return cached[1]
        ip = client_ip(address)
        trusted = ip is not None and any(ip in network for network in self.listener.trusted_networks)
        self._trust_cache = (address, trusted)
        return trusted

    def _access(self, session: SessionView) -> Optional[Reject]:
        if session.identity is not None:
            return None
        if self.listener.auth == "required":
            return Reject(530, "5.7.0", "Authentication required")
        if self.is_trusted(session.client_address):
            return None
        if self.auth_offered:
            return Reject(530, "5.7.0", "Authentication required")
        return Reject(554, "5.7.1", "Relay access denied")

    def _patterns(self, session: SessionView) -> tuple[SenderPattern, ...]:
        if session.identity is not None:
            return tuple(_pattern(p) for p in session.identity.allowed_senders)
        return self.trusted_senders

    def _whose(self, session: SessionView) -> str:
        if session.identity is not None:
            return f"login {session.identity.login}"
        return "this network"

    def _refuse(self, session: SessionView, verdict: Reject, what: str) -> Reject:
        self.log.info(
            "listener {listener}: refused {what} from {client} ({identity}): {code} {status} {text}",
            listener=self.listener.name, what=what, client=session.client_address,
            identity=session.identity.login if session.identity else "not authenticated",
            code=verdict.code, status=verdict.status, text=verdict.text,
        )
        return verdict

    def on_connect(self, session: SessionView) -> Continue:
        # Nothing to decide yet: the client may still STARTTLS and AUTH.
        return _CONTINUE

    def on_mail_from(self, session: SessionView, sender: str) -> Any:
        refusal = self._access(session)
        if refusal is not None:
            return self._refuse(session, refusal, f"MAIL FROM:<{sender}>")
        patterns = self._patterns(session)
        if sender and patterns and not _allowed(sender, patterns):
            return self._refuse(
                session, Reject(550, "5.7.1", f"Sender address <{_shown(sender)}> is not allowed for {self._whose(session)}"),
                f"MAIL FROM:<{sender}>",
            )
        return _CONTINUE

    def on_rcpt_to(self, session: SessionView, recipient: str) -> Any:
        refusal = self._access(session)
        if refusal is not None:
            return self._refuse(session, refusal, f"RCPT TO:<{recipient}>")
        return _CONTINUE

    def on_message(self, session: SessionView, message: MessageView) -> Any:
        refusal = self._access(session)
        if refusal is not None:
            return self._refuse(session, refusal, "message")
        try:
            header = message_header(message)
        except MailRefusal as e:
            return self._refuse(session, Reject(e.code, e.status, f"Message refused: {e.text}"), "message")
        patterns = self._patterns(session)
        if not patterns:
            return _CONTINUE
        if session.sender and not _allowed(session.sender, patterns):
            return self._refuse(
                session, Reject(550, "5.7.1", f"Sender address <{_shown(session.sender)}> is not allowed for {self._whose(session)}"),
                "message",
            )
        for name, mailbox in header.identity_mailboxes():
            if not _allowed(mailbox.address, patterns):
                return self._refuse(
                    session,
                    Reject(550, "5.7.1", f"{name} header address <{_shown(mailbox.address)}> is not allowed for {self._whose(session)}"),
                    "message",
                )
        return _CONTINUE


def _pattern(text: Any) -> SenderPattern:
    return text if isinstance(text, SenderPattern) else SenderPattern.parse(text)


def _allowed(address: str, patterns: tuple[SenderPattern, ...]) -> bool:
    return any(p.matches(address) for p in patterns)


__all__ = ["RelayAccessPolicy"]
