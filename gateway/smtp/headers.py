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
from typing import Callable, Optional

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
        # Usually the whole section comes in the first content: scan that in place and copy
        # only what continues (the buffer holds the content so far whenever None is returned).
        buf: bytes | bytearray = content
        if self.buffer:
            self.buffer += content
            buf = self.buffer
        pos = self._scan
        while pos <= self.limit:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if eol == pos:
                return self._finish(buf, pos, eol + 2)
            first = buf[pos:pos + 1]
            if first in (b" ", b"\t"):
                if pos == 0:
                    self.stopped_at = bytes(buf[pos:eol])
                    return self._finish(buf, pos, pos)
            else:
                found = field_name(buf, pos, eol)
                if found is None:
                    self.stopped_at = bytes(buf[pos:eol])
                    return self._finish(buf, pos, pos)
                self.names.add(found[0].lower())
            pos = eol + 2
        self._scan = pos
        if buf is content:
            self.buffer += content
        return None

    @property
    def overflowed(self) -> bool:
        """The header section is longer than ``limit`` and still not finished."""
        return not self.done and len(self.buffer) > self.limit

    def finish_at_end(self) -> tuple[bytes, bytes]:
        """The message ended inside the header section: all of it is headers, no body."""
        return self._finish(self.buffer, len(self.buffer), len(self.buffer))

    def _finish(self, buf: bytes | bytearray, header_end: int, body_start: int) -> tuple[bytes, bytes]:
        self.done = True
        if isinstance(buf, bytearray):
            buf = bytes(buf)
        self.buffer = bytearray()
        return buf[:header_end], buf[body_start:]


def message_date(when: float) -> str:
    """``when`` (seconds since the epoch) as an RFC 5322 date-time in UTC."""
    return format_datetime(datetime.datetime.fromtimestamp(when, datetime.timezone.utc))


@attrs.define
class MessageDates:
    """
    L{message_date}, formatted once per second of the clock instead of once per message.

    Why: building the datetime and formatting it cost more than the rest of the Received
    header, and every message of a busy second carries the same date.  One instance belongs to
    the listener's factory (so there is no module-level state) and is fed its clock's time.
    The answer is the uncached one for every ``when``: the cached text is reused only from the
    start of its second to 0.999 s after it, where rounding to microseconds cannot reach the
    next second; the rest of a second is formatted afresh.
    """

    _start: float = 1.0
    _until: float = 0.0
    _text: str = ""

    def __call__(self, when: float) -> str:
        if self._start <= when < self._until:
            return self._text
        moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
        self._text = format_datetime(moment)
        self._start = moment.replace(microsecond=0).timestamp()
        self._until = self._start + 0.999
        return self._text


def received_header(
    client_name: Optional[str], client_address: str, hostname: str, queue_id: str,
    tls: bool, authenticated: bool, when: float, dates: Callable[[float], str] = message_date,
) -> bytes:
    """
    The gateway's trace header, folded with CRLF + TAB.

    The ``with`` keyword follows RFC 3848 (ESMTP, ESMTPS = TLS, ESMTPA = authenticated,
    ESMTPSA = both), and a comment says the same in words.  The login name is deliberately not
    included: a Received header travels with the message to every recipient.  ``dates``
    formats ``when`` (a L{MessageDates} caches it per second).
    """
    literal = f"IPv6:{client_address}" if ":" in client_address else client_address
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    flags = "tls=" + ("yes" if tls else "no") + ("; authenticated" if authenticated else "")
    date = dates(when)
    text = (
        f"Received: from {client_name or 'unknown'} ([{literal}])\r\n"
        f"\tby {hostname} (graphsmtp) with {protocol} id {queue_id}\r\n"
        f"\t({flags});\r\n"
        f"\t{date}\r\n"
    )
    return text.encode("ascii")


def missing_headers(
    names: set, hostname: str, queue_id: str, when: float, add_message_id: bool, add_date: bool,
    dates: Callable[[float], str] = message_date,
) -> bytes:
    """Message-ID and Date lines for a message that lacks them (RFC 5322 requires both)."""
    lines = b""
    if add_message_id and b"message-id" not in names:
        lines += b"Message-ID: " + make_msgid(idstring=queue_id, domain=hostname).encode("ascii") + b"\r\n"
    if add_date and b"date" not in names:
        lines += b"Date: " + dates(when).encode("ascii") + b"\r\n"
    return lines


__all__ = ["HeaderCollector", "MessageDates", "message_date", "received_header", "missing_headers", "header_line", "apply_edits"]
