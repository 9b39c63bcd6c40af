"""
Address patterns and the addresses a message claims to come from — for policies, including
third-party ones.  Documented re-exports of the gateway's one mail grammar (L{gateway.mail}):
nothing here parses addresses or header fields itself.

Patterns are split at the last ``@`` and the two halves are matched separately, so a glob in
the local part can never swallow the domain (``*@corp.example`` does not match
``x@evilcorp.example`` or ``a@corp.example@evil.example``).  Matching uses the canonical form
(case, quoting, final dot: L{gateway.mail.canonical}): Exchange Online treats
``Scanner@Corp.Example``, ``"scanner"@corp.example`` and ``scanner@corp.example`` as one
mailbox, so an allowlist must not tell them apart.

L{message_header} gives the judged header of a L{MessageView} (the intake's own reading, so a
policy sees exactly what the relay guard and the Graph deliverer see); L{header_addresses}
keeps the older per-header interface.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional, Sequence

import attrs

from gateway.mail.addresses import canonical, mailbox_key
from gateway.mail.errors import MailRefusal
from gateway.mail.message import MessageHeader, display_name_of, parse_header_section
from gateway.mail.patterns import PatternError, SenderPattern
from gateway.policy.interfaces import PolicyConfigError


def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` → (``local``, ``domain``) split at the last ``@``; no ``@`` → (address, "")."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def without_subaddress(address: str) -> Optional[str]:
    """``local+tag@domain`` → ``local@domain`` (Exchange Online plus addressing), else None."""
    key = mailbox_key(address)
    return key if key is not None and key != canonical(address) else None


@attrs.frozen
class AddressPattern:
    """One allow/deny entry: an exact address, ``*@domain``, ``*``, or any glob such as ``scan-*@*.corp.example``."""

    pattern: SenderPattern

    @property
    def text(self) -> str:
        return self.pattern.text

    @classmethod
    def parse(cls, text: Any, option: str) -> "AddressPattern":
        try:
            return cls(SenderPattern.parse(text))
        except PatternError as e:
            raise PolicyConfigError(str(e), option) from None

    def matches(self, address: str) -> bool:
        return self.pattern.matches(address)


def parse_patterns(values: Iterable[str], option: str) -> tuple[AddressPattern, ...]:
    return tuple(AddressPattern.parse(v, option) for v in values)


def matches_any(patterns: Sequence[AddressPattern], address: str) -> bool:
    return any(p.matches(address) for p in patterns)


@attrs.frozen
class HeaderAddresses:
    """
    The addresses in every occurrence of one header.  ``problem`` is set (and ``addresses``
    should not be trusted) when the header section is refused by the mail grammar.
    """

    present: bool
    addresses: tuple[str, ...] = ()
    display_names: tuple[str, ...] = ()
    problem: Optional[str] = None


def message_header(message: Any) -> MessageHeader:
    """
    The judged header section of ``message`` (a L{MessageView}): the one the SMTP layer
    attached, else ``header_bytes`` judged now.  Raises L{MailRefusal} when the section is
    refused (the SMTP layer never lets such a message reach the policies).
    """
    judged = getattr(message, "mail", None)
    if isinstance(judged, MessageHeader):
        return judged
    if isinstance(judged, MailRefusal):
        raise judged
    return parse_header_section(getattr(message, "header_bytes", b"") or b"")


def _raw_section(headers: Any) -> bytes:
    """Rebuild raw header lines from an ``email`` message without structured parsing."""
    lines = []
    for name, value in headers.raw_items():
        text = str(value).replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
        lines.append(f"{name}:{'' if text[:1] in (' ', chr(9)) else ' '}{text}".encode("utf-8", "surrogateescape") + b"\r\n")
    return b"".join(lines)


def header_addresses(headers: Any, name: str) -> HeaderAddresses:
    """
    The addresses of header ``name``: ``headers`` is a L{MessageHeader}, a L{MessageView}, or
    an ``email`` message (read through its raw fields, never the structured-header parser).
    """
    try:
        if isinstance(headers, MessageHeader):
            judged = headers
        elif hasattr(headers, "header_bytes"):
            judged = message_header(headers)
        elif headers is None:
            return HeaderAddresses(present=False)
        else:
            from email import errors as email_errors

            if headers.get_unixfrom() is not None or any(
                    isinstance(d, (email_errors.MisplacedEnvelopeHeaderDefect, email_errors.MissingHeaderBodySeparatorDefect))
                    for d in getattr(headers, "defects", ())):
                return HeaderAddresses(present=True, problem="header section is malformed")
            judged = parse_header_section(_raw_section(headers))
    except MailRefusal as e:
        return HeaderAddresses(present=True, problem=e.text)
    if not judged.has(name):
        return HeaderAddresses(present=False)
    mailboxes = judged.mailboxes(name)
    if not mailboxes:
        return HeaderAddresses(present=True, problem=f"{display_name_of(name.lower())} header has no address")
    return HeaderAddresses(
        present=True,
        addresses=tuple(m.address for m in mailboxes),
        display_names=tuple(m.display_name for m in mailboxes),
    )


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
    "AddressPattern", "parse_patterns", "matches_any", "split_address", "without_subaddress",
    "HeaderAddresses", "header_addresses", "message_header", "canonical", "mailbox_key", "client_ip", "client_key",
]
