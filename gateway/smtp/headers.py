"""
The message header section at intake: finding where it ends in the incoming bytes, the
gateway's own header lines (Received, and Message-ID/Date when missing), and policy header
edits applied to the raw bytes.

Only the header section is ever held in memory (bounded by ``max_header_size``); the body
streams straight to the spool.  Edits work on raw lines so every header a policy did not touch
stays byte for byte as the client sent it.
"""

from __future__ import annotations

import datetime
import re
from email.utils import format_datetime, make_msgid
from typing import Iterable, Optional

import attrs

from gateway.policy.headers import header_line
from gateway.policy.interfaces import HeaderEdit

# RFC 5322 field name (printable ASCII except colon); obsolete syntax allows WSP before ':'.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


@attrs.define
class HeaderCollector:
    """
    Accumulates message content until the header section is complete.

    The header section ends at the first empty line, or — for a message that starts without
    headers or has a line that is not a header field — just before that line; the gateway then
    inserts the empty line itself, so the stored message always has a well-formed header/body
    separator (Twisted's stock server does the same for header-less bodies).

    ``names`` collects the lower-cased field names seen, to know whether Message-ID and Date
    are present.  Scanning stops at ``limit`` bytes; the caller then refuses the message
    (L{overflowed}).
    """

    limit: int
    buffer: bytearray = attrs.field(factory=bytearray)
    names: set = attrs.field(factory=set)
    done: bool = False
    _scan: int = 0

    def feed(self, content: bytes) -> Optional[tuple[bytes, bytes]]:
        """
        Add content (whole CRLF lines).  Returns None while the header section continues, else
        ``(header_lines, body_start)``: the header field lines (each ending in CRLF, without the
        empty separator line) and whatever content follows the separator.
        """
        self.buffer += content
        buf = self.buffer
        pos = self._scan
        while pos <= self.limit:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self._scan = pos
                return None
            if eol == pos:
                return self._finish(pos, eol + 2)
            first = buf[pos:pos + 1]
            if first in (b" ", b"\t"):
                if pos == 0:
                    return self._finish(pos, pos)
            else:
                m = _FIELD.match(buf, pos, eol)
                if m is None:
                    return self._finish(pos, pos)
                self.names.add(bytes(m.group(1)).lower())
            pos = eol + 2
        self._scan = pos
        return None

    @property
    def overflowed(self) -> bool:
        """The header section is longer than ``limit`` and still not finished."""
        return not self.done and len(self.buffer) > self.limit

    def finish_at_end(self) -> tuple[bytes, bytes]:
        """The message ended inside the header section: all of it is headers, no body."""
        return self._finish(len(self.buffer), len(self.buffer))

    def _finish(self, header_end: int, body_start: int) -> tuple[bytes, bytes]:
        self.done = True
        headers = bytes(self.buffer[:header_end])
        body = bytes(self.buffer[body_start:])
        self.buffer = bytearray()
        return headers, body


def received_header(
    client_name: Optional[str], client_address: str, hostname: str, queue_id: str,
    tls: bool, authenticated: bool, when: float,
) -> bytes:
    """
    The gateway's trace header, folded with CRLF + TAB.

    The ``with`` keyword follows RFC 3848 (ESMTP, ESMTPS = TLS, ESMTPA = authenticated,
    ESMTPSA = both), and a comment says the same in words.  The login name is deliberately not
    included: a Received header travels with the message to every recipient.
    """
    literal = f"IPv6:{client_address}" if ":" in client_address else client_address
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    flags = "tls=" + ("yes" if tls else "no") + ("; authenticated" if authenticated else "")
    date = format_datetime(datetime.datetime.fromtimestamp(when, datetime.timezone.utc))
    text = (
        f"Received: from {client_name or 'unknown'} ([{literal}])\r\n"
        f"\tby {hostname} (graphsmtp) with {protocol} id {queue_id}\r\n"
        f"\t({flags});\r\n"
        f"\t{date}\r\n"
    )
    return text.encode("ascii")


def missing_headers(names: set, hostname: str, queue_id: str, when: float, add_message_id: bool, add_date: bool) -> bytes:
    """Message-ID and Date lines for a message that lacks them (RFC 5322 requires both)."""
    lines = b""
    if add_message_id and b"message-id" not in names:
        lines += b"Message-ID: " + make_msgid(idstring=queue_id, domain=hostname).encode("ascii") + b"\r\n"
    if add_date and b"date" not in names:
        date = format_datetime(datetime.datetime.fromtimestamp(when, datetime.timezone.utc))
        lines += b"Date: " + date.encode("ascii") + b"\r\n"
    return lines


def split_fields(header_lines: bytes) -> list[tuple[bytes, bytes]]:
    """Header lines as ``(lower-cased name, raw bytes of the field incl. continuations)``."""
    fields: list[tuple[bytes, bytes]] = []
    for line in header_lines.split(b"\r\n")[:-1] if header_lines else []:
        raw = line + b"\r\n"
        if line[:1] in (b" ", b"\t") and fields:
            name, previous = fields[-1]
            fields[-1] = (name, previous + raw)
            continue
        m = _FIELD.match(line)
        fields.append(((m.group(1).lower() if m else b""), raw))
    return fields


def apply_edits(header_lines: bytes, edits: Iterable[HeaderEdit]) -> bytes:
    """
    ``header_lines`` with ``edits`` applied in order: ``remove`` drops every occurrence,
    ``replace`` drops them and puts one where the first was (or at the end), ``add`` appends.
    """
    fields = split_fields(header_lines)
    for edit in edits:
        key = edit.name.lower().encode("ascii")
        first = next((i for i, (name, _) in enumerate(fields) if name == key), None)
        if edit.action in ("remove", "replace"):
            fields = [f for f in fields if f[0] != key]
        if edit.action == "add" or (edit.action == "replace" and first is None):
            fields.append((key, header_line(edit.name, edit.value or "")))
        elif edit.action == "replace":
            fields.insert(first, (key, header_line(edit.name, edit.value or "")))
    return b"".join(raw for _, raw in fields)


__all__ = ["HeaderCollector", "received_header", "missing_headers", "header_line", "split_fields", "apply_edits"]
