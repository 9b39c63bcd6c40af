"""
Parsing and validating what clients put in HELO/EHLO, MAIL FROM and RCPT TO.

Why our own parser instead of ``twisted.mail.smtp``'s ``mail_re``/``Address``: the stock code
discards ESMTP parameters (so SIZE= cannot be checked), qualifies a domain-less address with the
*server's* host name, and stores the HELO argument verbatim (a bare LF in it becomes header
injection in the Received line).  Everything here is pure: bytes in, a value or an
L{AddressProblem} (with the SMTP reply to give) out.

SMTPUTF8 is not supported: addresses must be ASCII (RFC 5321).  A non-ASCII address gets
``553 5.6.7`` as RFC 6531 §3.5 suggests for servers without SMTPUTF8, and the ``SMTPUTF8``
parameter gets ``555 5.5.4``.  Reason: the delivery side (Graph) would have to carry EAI
addresses end to end, which nobody has verified, and half-support is worse than a clear refusal.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

import attrs

# RFC 5321 §4.5.3.1: local part 64, domain 255, path 256 octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = rb"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_STRING = re.compile(rb"[" + _ATEXT + rb"]+(\.[" + _ATEXT + rb"]+)*\Z")
# qtextSMTP (printable ASCII except " and \) or a quoted pair.
_QUOTED_STRING = re.compile(rb'"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
# Host names as they appear in the wild: labels of letters, digits, hyphen and (for Windows
# hosts) underscore, no empty labels, a trailing dot tolerated; the whole name is one pattern
# (one match per name instead of one per label; issue 13).
_DOMAIN_LABEL = rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(_DOMAIN_LABEL + rb"(?:\." + _DOMAIN_LABEL + rb")*\.?\Z")
_ESMTP_KEYWORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ESMTP_VALUE = re.compile(rb"[\x21-\x3c\x3e-\x7e]+\Z")


@attrs.frozen
class AddressProblem:
    """Why a command argument was refused, as the SMTP reply to send."""

    code: int
    status: str
    text: str


@attrs.frozen
class PathArgument:
    """
    A parsed ``FROM:<path> params`` or ``TO:<path> params`` argument.

    ``address`` is ``local@domain`` without angle brackets (``""`` for the null reverse-path);
    ``params`` maps upper-cased ESMTP keywords to their value (``None`` when given without one).
    """

    address: str
    params: dict


def valid_domain(name: bytes) -> bool:
    """A host name made of sane labels (total length within RFC 5321 limits)."""
    if _HOST_NAME.match(name) is None:
        return False
    return len(name) - name.endswith(b".") <= MAX_DOMAIN


def valid_address_literal(literal: bytes) -> bool:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3)."""
    if len(literal) < 3 or literal[:1] != b"[" or literal[-1:] != b"]":
        return False
    inner = literal[1:-1].decode("ascii", "replace")
    if "%" in inner:
        # ipaddress takes "fe80::1%<anything>" (a zone id, any text, even a line break); an
        # RFC 5321 literal has none, and this text goes into Received and DSN headers.
        return False
    try:
        if inner[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def parse_helo(argument: bytes) -> Optional[str]:
    """
    The HELO/EHLO name as text if it is a domain or an address literal, else None.

    This is what goes into the Received header, so anything with spaces, control characters,
    8-bit bytes or angle brackets is refused rather than cleaned up.
    """
    name = argument.strip(b" \t")
    if not name or not name.isascii():
        return None
    if name[:1] == b"[":
        return name.decode("ascii") if valid_address_literal(name) else None
    return name.decode("ascii") if valid_domain(name) else None


def _split_path(rest: bytes) -> tuple[Optional[bytes], bytes]:
    """Split ``<path> params`` (or a bare ``path params``) into the path and the rest."""
    rest = rest.lstrip(b" \t")
    if rest[:1] == b"<":
        i, quoted = 1, False
        while i < len(rest):
            c = rest[i:i + 1]
            if quoted:
                if c == b"\\":
                    i += 1
                elif c == b'"':
                    quoted = False
            elif c == b'"':
                quoted = True
            elif c == b">":
                return rest[1:i], rest[i + 1:]
            i += 1
        return None, b""
    # Tolerate a missing pair of angle brackets (common in old scripts and devices).
    parts = rest.split(None, 1)
    if not parts:
        return None, b""
    return parts[0], parts[1] if len(parts) > 1 else b""


def _parse_params(text: bytes) -> Optional[dict]:
    params: dict = {}
    for item in text.split():
        key, eq, value = item.partition(b"=")
        if not _ESMTP_KEYWORD.match(key) or (eq and not _ESMTP_VALUE.match(value)):
            return None
        name = key.decode("ascii").upper()
        if name in params:
            return None
        params[name] = value.decode("ascii") if eq else None
    return params


def _parse_mailbox(path: bytes, status: str) -> tuple[Optional[str], Optional[AddressProblem]]:
    bad = AddressProblem(501, status, "Bad address syntax")
    if not path.isascii():
        return None, AddressProblem(553, "5.6.7", "Non-ASCII addresses are not supported (no SMTPUTF8)")
    if len(path) > MAX_PATH:
        return None, AddressProblem(501, status, "Address too long")
    if path[:1] == b"@":
        # Source route (<@a,@b:user@example.com>): RFC 5321 says to accept and ignore it.
        colon = path.find(b":")
        if colon < 0:
            return None, bad
        path = path[colon + 1:]
    at = path.rfind(b"@")
    if at <= 0:
        return None, AddressProblem(501, status, "Address must be local-part@domain")
    local, domain = path[:at], path[at + 1:]
    if len(local) > MAX_LOCAL_PART:
        return None, AddressProblem(501, status, "Local part too long")
    if not (_DOT_STRING.match(local) or _QUOTED_STRING.match(local)):
        return None, bad
    if not (valid_domain(domain) or valid_address_literal(domain)):
        return None, AddressProblem(501, status, "Bad domain in address")
    return (local + b"@" + domain).decode("ascii"), None


def _parse_path_argument(rest: bytes, prefix: bytes, status: str, allow_null: bool):
    if rest[:len(prefix)].upper() != prefix:
        return None, AddressProblem(501, "5.5.4", "Syntax: " + ("MAIL FROM:<address>" if allow_null else "RCPT TO:<address>"))
    path, tail = _split_path(rest[len(prefix):])
    if path is None:
        return None, AddressProblem(501, "5.5.4", "Syntax error in address (missing >?)")
    params = _parse_params(tail)
    if params is None:
        if not tail.isascii():
            return None, AddressProblem(553, "5.6.7", "Non-ASCII addresses are not supported (no SMTPUTF8)")
        return None, AddressProblem(501, "5.5.4", "Syntax error in parameters")
    if path == b"":
        if allow_null:
            return PathArgument("", params), None
        return None, AddressProblem(501, status, "Empty recipient address")
    address, problem = _parse_mailbox(path, status)
    if address is None:
        return None, problem
    return PathArgument(address, params), None


# The shape nearly every client sends, ``FROM:<local@domain>`` with a dot-atom local part and
# a host name: one regular expression answers it instead of the general parser's scan byte by
# byte (issue 13).  What it matches, the general parser accepts with the same address;
# anything else (null path, quoted local part, source route, address literal, no brackets,
# over-long parts, bad parameters) goes to the general parser and gets its reply.
_COMMON_PATH = (
    rb"[ \t]*<((?:[" + _ATEXT + rb"]+(?:\.[" + _ATEXT + rb"]+)*)@" + _DOMAIN_LABEL
    + rb"(?:\." + _DOMAIN_LABEL + rb")*\.?)>(.*)\Z"
)
_COMMON_MAIL_FROM = re.compile(rb"(?i:FROM:)" + _COMMON_PATH, re.DOTALL)
_COMMON_RCPT_TO = re.compile(rb"(?i:TO:)" + _COMMON_PATH, re.DOTALL)


def _parse_common(pattern: re.Pattern, rest: bytes) -> Optional[PathArgument]:
    """The common shape of a path argument, or None to leave it to the general parser."""
    match = pattern.match(rest)
    if match is None:
        return None
    path, tail = match.group(1, 2)
    if len(path) > MAX_PATH or path.rfind(b"@") > MAX_LOCAL_PART:
        return None
    params = _parse_params(tail) if tail else {}
    if params is None:
        return None
    return PathArgument(path.decode("ascii"), params)


def parse_mail_from(rest: bytes) -> tuple[Optional[PathArgument], Optional[AddressProblem]]:
    """Parse the argument of ``MAIL`` (``FROM:<a@b> SIZE=...``)."""
    common = _parse_common(_COMMON_MAIL_FROM, rest)
    if common is not None:
        return common, None
    return _parse_path_argument(rest, b"FROM:", "5.1.7", allow_null=True)


def parse_rcpt_to(rest: bytes) -> tuple[Optional[PathArgument], Optional[AddressProblem]]:
    """Parse the argument of ``RCPT`` (``TO:<a@b>``)."""
    common = _parse_common(_COMMON_RCPT_TO, rest)
    if common is not None:
        return common, None
    return _parse_path_argument(rest, b"TO:", "5.1.3", allow_null=False)


def recipient_key(address: str) -> str:
    """Identity of a recipient for duplicate detection: the domain is case-insensitive."""
    local, _, domain = address.rpartition("@")
    return local + "@" + domain.lower()


__all__ = [
    "AddressProblem", "PathArgument", "parse_helo", "parse_mail_from", "parse_rcpt_to",
    "recipient_key", "valid_domain", "valid_address_literal",
]
