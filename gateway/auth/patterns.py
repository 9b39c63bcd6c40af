"""
Sender patterns for logins (the users file) and listeners (``trusted_senders``): a thin face on
L{gateway.mail.patterns}, the gateway's one matcher, kept so the users file, the relay guard and
the configuration keep their string-based API.

A pattern is an exact address (``scanner@example.com``), a whole domain (``*@example.com``), a
glob (``alerts-*@example.com``, ``*@*.example.com``) or ``*`` (any address); see
L{gateway.mail.patterns} for how addresses and patterns are compared.
"""

from __future__ import annotations

from typing import Iterable

from gateway.mail.patterns import ANY_SENDER, PatternError, SenderPattern


def validate_pattern(pattern: str) -> str:
    """Return the pattern normalised (canonical spelling) or raise L{PatternError}."""
    return SenderPattern.parse(pattern).text


def sender_matches(address: str, patterns: Iterable[str]) -> bool:
    """Whether ``address`` is allowed by any of ``patterns`` (already validated)."""
    return any(SenderPattern.parse(p).matches(address) for p in patterns)


__all__ = ["ANY_SENDER", "PatternError", "validate_pattern", "sender_matches"]
