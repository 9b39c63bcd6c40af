"""
Sender patterns: which addresses a login (or a trusted network) may use as envelope sender and
in the From/Sender headers.

A pattern is an exact address (``scanner@example.com``), a whole domain (``*@example.com``), a
glob (``alerts-*@example.com``, ``*@*.example.com``) or ``*`` (any address).  Pattern and address
are split at the last ``@`` and each side is matched on its own, so a ``*`` can never swallow the
``@`` and move the match into another domain.  Matching ignores case on both sides: Exchange
Online treats addresses case-insensitively, so ``Scanner@Example.com`` is the same mailbox.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Optional

ANY_SENDER = "*"


class PatternError(ValueError):
    """A sender pattern is malformed; the message says why."""


def validate_pattern(pattern: str) -> str:
    """Return the pattern normalised (stripped, lower-case) or raise L{PatternError}."""
    if not isinstance(pattern, str):
        raise PatternError("must be a string")
    p = pattern.strip().lower()
    if p == ANY_SENDER:
        return p
    if not p or any(c.isspace() or ord(c) < 32 for c in p) or "<" in p or ">" in p:
        raise PatternError(f"{pattern!r} is not an address pattern")
    local, at, domain = p.rpartition("@")
    if not at or not local or not domain:
        raise PatternError(f"{pattern!r} needs the form local@domain, *@domain or *")
    return p


def _split(address: str) -> Optional[tuple[str, str]]:
    local, at, domain = address.strip().lower().rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.rstrip(".")


def sender_matches(address: str, patterns: Iterable[str]) -> bool:
    """Whether ``address`` is allowed by any of ``patterns`` (already validated)."""
    parts = _split(address)
    for pattern in patterns:
        p = pattern.lower()
        if p == ANY_SENDER:
            return True
        if parts is None:
            continue
        p_local, _, p_domain = p.rpartition("@")
        if fnmatch.fnmatchcase(parts[0], p_local) and fnmatch.fnmatchcase(parts[1], p_domain.rstrip(".")):
            return True
    return False


__all__ = ["ANY_SENDER", "PatternError", "validate_pattern", "sender_matches"]
