"""
Sender patterns: which addresses a login, a trusted network or a policy rule allows.

One matcher for the users file, ``trusted_senders``, ``sender-allowlist`` and
``recipient-rules``.  A pattern is ``*`` (any address), an exact address, ``*@domain`` or a glob
(``alerts-*@example.com``, ``*@*.example.com``).  Pattern and address are both brought to the
canonical form (L{gateway.mail.canonical}: case, quoting, final dot) and split at their last
``@``; each side is matched on its own, so a ``*`` can never swallow the ``@`` and move the
match into another domain.  An address that is not one address by the mail grammar matches
nothing but ``*``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

import attrs

from gateway.mail.addresses import MAX_DOMAIN, MAX_LOCAL_PART, parse_addr_spec
from gateway.mail.canonical import canonical_parts, quote_local
from gateway.mail.errors import MailRefusal

ANY_SENDER = "*"
_GLOB_CHARS = frozenset("*?[")


class PatternError(ValueError):
    """A sender pattern is malformed; the message says why."""


def _unquote(local: str) -> str:
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        inner = local[1:-1]
        out, escaped = [], False
        for c in inner:
            if escaped:
                out.append(c)
                escaped = False
            elif c == "\\":
                escaped = True
            else:
                out.append(c)
        return "".join(out)
    return local


def _safe_characters(stripped: str, local: str, domain: str) -> bool:
    """Spaces only inside a quoted local part; control characters and angle brackets nowhere."""
    if not stripped or any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        return False
    quoted = len(local) >= 2 and local[0] == '"' and local[-1] == '"'
    unquoted_text = domain if quoted else stripped
    return not (any(c.isspace() for c in unquoted_text) or "<" in unquoted_text or ">" in unquoted_text)


@attrs.frozen
class SenderPattern:
    """One parsed pattern; ``text`` is its normalised spelling (``*`` or ``local@domain``)."""

    text: str
    local: str = ""
    domain: str = ""
    any: bool = False
    exact: bool = False

    @classmethod
    def parse(cls, text: object) -> "SenderPattern":
        """Parse ``text`` or raise L{PatternError} saying why it is not a pattern."""
        if not isinstance(text, str):
            raise PatternError("must be a string")
        stripped = text.strip()
        if stripped == ANY_SENDER:
            return cls(ANY_SENDER, any=True)
        local, at, domain = stripped.rpartition("@")
        if not _safe_characters(stripped, local, domain):
            raise PatternError(f"{text!r} is not an address pattern (no spaces, control characters or angle brackets)")
        if not at or not local or not domain:
            raise PatternError(f"{text!r} needs the form local@domain, *@domain, a glob such as \"scan-*@corp.example\", or *")
        local = _unquote(local)
        if len(local) > MAX_LOCAL_PART or len(domain) > MAX_DOMAIN:
            raise PatternError(f"{text!r} is longer than an address can be")
        local, domain = canonical_parts(local, domain)
        exact = not (_GLOB_CHARS & set(local + domain))
        return cls(f"{quote_local(local)}@{domain}", local, domain, exact=exact)

    def matches(self, address: str) -> bool:
        """Whether ``address`` (a bare address; quoted local parts and any case allowed) is covered."""
        if self.any:
            return True
        try:
            mailbox = parse_addr_spec(address)
        except MailRefusal:
            return False
        return self.matches_parts(*canonical_parts(mailbox.local, mailbox.domain))

    def matches_parts(self, local: str, domain: str) -> bool:
        """Match canonical (local, domain) parts."""
        if self.any:
            return True
        if self.exact:
            return local == self.local and domain == self.domain
        return fnmatchcase(local, self.local) and fnmatchcase(domain, self.domain)


def parse_patterns(values: Iterable[object]) -> tuple[SenderPattern, ...]:
    return tuple(SenderPattern.parse(v) for v in values)


def matches_any(patterns: Iterable[SenderPattern], address: str) -> bool:
    """Whether any of ``patterns`` covers ``address``."""
    return any(p.matches(address) for p in patterns)


__all__ = ["ANY_SENDER", "PatternError", "SenderPattern", "parse_patterns", "matches_any"]
