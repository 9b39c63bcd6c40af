"""
Address patterns and the addresses a message claims to come from.

Patterns are split at the last ``@`` and the two halves are matched separately, so a glob in
the local part can never swallow the domain (``*@corp.example`` does not match
``x@evilcorp.example`` or ``a@corp.example@evil.example``).  Matching ignores case in both
halves: Exchange Online treats addresses case-insensitively, so ``Scanner@Corp.Example`` and
``scanner@corp.example`` name the same mailbox and an allowlist must not tell them apart.

Header addresses are read with the ``email`` package's structured headers.  A header that the
parser had to guess at (an ``InvalidHeaderDefect``) is reported as malformed rather than
guessed at again: a downstream parser may guess differently, and that difference is exactly
what From-spoofing exploits.
"""

from __future__ import annotations

import ipaddress
import re
from fnmatch import fnmatchcase
from typing import Any, Iterable, Optional, Sequence

import attrs
from email import errors as email_errors

from gateway.policy.interfaces import PolicyConfigError

_GLOB_CHARS = frozenset("*?[")


def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` → (``local``, ``domain``) split at the last ``@``; no ``@`` → (address, "")."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def comparable_parts(address: str) -> tuple[str, str]:
    """
    (local, domain) lower-cased, with a quoted local part unquoted (``"bob"@x`` is ``bob@x``,
    RFC 5321 §4.1.2) and a trailing dot of the domain dropped: spellings that reach the same
    mailbox must match the same patterns.
    """
    local, domain = split_address(address)
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    if domain.endswith(".") and not domain.endswith(".."):
        domain = domain[:-1]
    return local.lower(), domain.lower()


def without_subaddress(address: str) -> Optional[str]:
    """``local+tag@domain`` → ``local@domain`` (Exchange Online plus addressing), else None."""
    local, domain = comparable_parts(address)
    base, plus, _ = local.partition("+")
    if not plus or not base or not domain:
        return None
    return f"{base}@{domain}"


@attrs.frozen
class AddressPattern:
    """One allow/deny entry: an exact address, ``*@domain``, or any glob such as ``scan-*@*.corp.example``."""

    text: str
    _local: str = attrs.field(alias="local")
    _domain: str = attrs.field(alias="domain")
    _exact: bool = attrs.field(alias="exact")

    @classmethod
    def parse(cls, text: str, option: str) -> "AddressPattern":
        if not isinstance(text, str) or not text.strip():
            raise PolicyConfigError(f"{text!r} is not an address pattern", option)
        cleaned = text.strip()
        local, domain = split_address(cleaned)
        if not local or not domain:
            raise PolicyConfigError(
                f"{cleaned!r} is not an address pattern: use an address, \"*@domain\" or a glob such as \"scan-*@corp.example\"",
                option,
            )
        if any(c.isspace() or ord(c) < 32 for c in cleaned) or "<" in cleaned or ">" in cleaned:
            raise PolicyConfigError(f"{cleaned!r} is not an address pattern (no spaces or angle brackets)", option)
        exact = not (_GLOB_CHARS & set(cleaned))
        return cls(text=cleaned, local=local.lower(), domain=domain.lower(), exact=exact)

    def matches(self, address: str) -> bool:
        local, domain = comparable_parts(address)
        if not domain:
            return False
        if self._exact:
            return local == self._local and domain == self._domain
        return fnmatchcase(local, self._local) and fnmatchcase(domain, self._domain)


def parse_patterns(values: Iterable[str], option: str) -> tuple[AddressPattern, ...]:
    return tuple(AddressPattern.parse(v, option) for v in values)


def matches_any(patterns: Sequence[AddressPattern], address: str) -> bool:
    return any(p.matches(address) for p in patterns)


@attrs.frozen
class HeaderAddresses:
    """
    The addresses in every occurrence of one header.  ``problem`` is set (and ``addresses``
    should not be trusted) when any occurrence is malformed.
    """

    present: bool
    addresses: tuple[str, ...] = ()
    display_names: tuple[str, ...] = ()
    problem: Optional[str] = None


_SINGLE_HEADERS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc"})


# The email parser skips a field it takes for an mbox "From " line and ends the header section
# at a field name followed by a tab; the SMTP intake and the Graph deliverer read both as
# header fields ("From : ceo@..." is From to them), so what the parser missed may be the From.
_HIDING_DEFECTS = (email_errors.MisplacedEnvelopeHeaderDefect, email_errors.MissingHeaderBodySeparatorDefect)


def header_addresses(headers: Any, name: str) -> HeaderAddresses:
    """Read the addresses of header ``name`` from a message parsed with ``email.policy.SMTP``."""
    if headers is not None and (
        getattr(headers, "get_unixfrom", lambda: None)() is not None
        or any(isinstance(d, _HIDING_DEFECTS) for d in getattr(headers, "defects", ()))
    ):
        return HeaderAddresses(present=True, problem="header section is malformed")
    try:
        values = headers.get_all(name) if headers is not None else None
    except (ValueError, TypeError):
        # e.g. an encoded word in the display name that decodes to a line break.
        return HeaderAddresses(present=True, problem=f"{name} header is malformed")
    if not values:
        return HeaderAddresses(present=False)
    if len(values) > 1 and name.lower() in _SINGLE_HEADERS:
        # RFC 5322 allows one; with two, mail clients show one and a checker may read the other.
        return HeaderAddresses(present=True, problem=f"more than one {name} header")
    addresses: list[str] = []
    names: list[str] = []
    for value in values:
        defects = getattr(value, "defects", ())
        if any(isinstance(d, (email_errors.InvalidHeaderDefect, email_errors.NonPrintableDefect)) for d in defects):
            return HeaderAddresses(present=True, problem=f"{name} header is malformed")
        found = getattr(value, "addresses", None)
        if found is None:
            return HeaderAddresses(present=True, problem=f"{name} header is not an address header")
        for address in found:
            if not address.username or not address.domain:
                return HeaderAddresses(present=True, problem=f"{name} header has an incomplete address")
            addresses.append(address.addr_spec)
            names.append(address.display_name)
    if not addresses:
        return HeaderAddresses(present=True, problem=f"{name} header has no address")
    return HeaderAddresses(present=True, addresses=tuple(addresses), display_names=tuple(names))


def client_ip(text: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The client address as an IP (IPv4-mapped IPv6 unwrapped), or None for non-IP peers."""
    try:
        ip = ipaddress.ip_address((text or "").strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_key(address: Optional[str], ipv6_prefix: int = 64) -> str:
    """
    Who a client is for counting (connections, failed logins, rate limits): the IPv4 address,
    or the IPv6 network of ``ipv6_prefix`` bits — one IPv6 host usually owns a whole /64, so
    per-address counting would be trivially evaded — or the text as given for non-IP peers.
    """
    if not address:
        return "unknown"
    ip = client_ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ipv6_prefix < 128:
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip)


__all__ = [
    "AddressPattern", "parse_patterns", "matches_any", "split_address", "comparable_parts", "without_subaddress",
    "HeaderAddresses", "header_addresses", "client_ip", "client_key",
]
