"""
The client side of AUTH PLAIN and AUTH LOGIN as a small state machine over decoded lines.

Why not Twisted's ``ESMTP.state_AUTH`` with ``imap4.PLAINCredentials``/``LOGINCredentials``: a
malformed PLAIN response raises ``IllegalClientResponse`` out of ``dataReceived`` and an AUTH
without a mechanism raises ``IndexError`` (both drop the connection with "Unhandled Error"),
and a bad line gets no enhanced status code.  Here every input ends in one of three values —
a challenge to send, credentials to check, or a refusal — and nothing raises.

The password only ever lives in the L{UsernamePassword} handed to the portal; no value here
has a repr that shows it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Optional, Union

import attrs
from twisted.cred.credentials import UsernamePassword

# RFC 4954 §4: AUTH lines may be up to 12288 octets; longer ones get 500 5.5.6.
MAX_AUTH_LINE = 12288
_MAX_FIELD = 1024


@attrs.frozen
class Challenge:
    """Send ``334 <base64 text>`` and wait for the next line."""

    text: bytes


@attrs.frozen
class Refusal:
    """End the exchange with this reply; the session continues."""

    code: int
    status: str
    text: str


@attrs.frozen(repr=False)
class Ready:
    """The exchange produced credentials for the portal."""

    credentials: UsernamePassword

    def __repr__(self) -> str:
        return "<Ready credentials>"


Step = Union[Challenge, Refusal, Ready]

CANCELLED = Refusal(501, "5.0.0", "Authentication cancelled")
BAD_BASE64 = Refusal(501, "5.5.2", "Invalid base64 data")


def _decode(line: bytes) -> Optional[bytes]:
    if line == b"=":
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return None


class AuthExchange:
    """One AUTH exchange; call L{start} once, then L{respond} for each client line."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self._username: Optional[bytes] = None

    def start(self, initial: Optional[bytes]) -> Step:
        """Begin with the optional initial response from the AUTH command line."""
        if self.mechanism == "PLAIN":
            if initial is None:
                return Challenge(b"")
            return self.respond(initial)
        if initial is None:
            return Challenge(b"Username:")
        return self.respond(initial)

    def respond(self, line: bytes) -> Step:
        line = line.strip(b" \t")
        if line == b"*":
            return CANCELLED
        decoded = _decode(line)
        if decoded is None:
            return BAD_BASE64
        if self.mechanism == "PLAIN":
            return self._plain(decoded)
        if self._username is None:
            if not decoded or len(decoded) > _MAX_FIELD:
                return Refusal(501, "5.5.2", "Invalid user name")
            self._username = decoded
            return Challenge(b"Password:")
        if len(decoded) > _MAX_FIELD:
            return Refusal(501, "5.5.2", "Invalid password")
        return Ready(UsernamePassword(self._username, decoded))

    def _plain(self, decoded: bytes) -> Step:
        # RFC 4616: [authzid] NUL authcid NUL passwd.  The identity is always the one that
        # proved its password; an authzid naming anyone else is refused (not silently
        # ignored, which would let a client believe it acts as that identity).
        fields = decoded.split(b"\x00")
        if len(fields) != 3:
            return Refusal(501, "5.5.2", "Invalid PLAIN response: expected authzid NUL user NUL password")
        authzid, username, password = fields
        if not username or len(username) > _MAX_FIELD or len(password) > _MAX_FIELD:
            return Refusal(501, "5.5.2", "Invalid PLAIN response")
        if authzid and authzid != username:
            return Refusal(535, "5.7.8", "Authorization identity must be empty or the login name")
        return Ready(UsernamePassword(username, password))


__all__ = ["MAX_AUTH_LINE", "AuthExchange", "Challenge", "Refusal", "Ready", "CANCELLED"]
