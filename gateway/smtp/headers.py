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
from email.utils import format_datetime, make_msgid
from typing import Optional

import attrs

from gateway.mail.fields import apply_edits, field_name, header_line


@attrs.define
class HeaderCollector:
    """
    Accumulates message content until the header section is complete.

    The header section ends at the first empty line, or — for a message that starts without
    headers or has a line that is not a header field — just before that line; the gateway then
    inserts the empty line itself, so the stored message always has a well-formed header/body
    separator (Twisted's stock server does the same for header-less bodies).

    What is a field line is decided by L{gateway.mail.fields}, the same rules the judge and
    every later reader use.  ``names`` collects the lower-cased field names seen, to know
    whether Message-ID and Date are present; ``stopped_at`` keeps the line that ended the
    section when it was not the empty line (an mbox ``From `` line there is refused by the
    judge).  Scanning stops at ``limit`` bytes; the caller then refuses the message
    (L{overflowed}).
    """

    limit: int
    buffer: bytearray = attrs.field(factory=bytearray)
    names: set = attrs.field(factory=set)
    done: bool = False
    stopped_at: bytes = b""
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
                    self.stopped_at = bytes(buf[pos:eol])
                    return self._finish(pos, pos)
            else:
                found = field_name(buf, pos, eol)
                if found is None:
                    self.stopped_at = bytes(buf[pos:eol])
                    return self._finish(pos, pos)
                self.names.add(found[0].lower())
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


__all__ = ["HeaderCollector", "received_header", "missing_headers", "header_line", "apply_edits"]
