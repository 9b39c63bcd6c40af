"""
One message's DATA phase: raw bytes in, checked message bytes out to one spool writer.

It ties together L{DataFraming} (end of data, unstuffing, bare CR/LF, NUL, line length), the size
limit, and the header section (held in memory only until it ends, so the gateway's Received
header and a missing Message-ID/Date can be put in front).  The SMTP protocol only decides what
to answer; this class never talks to the client.
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs

from gateway.config.model import Limits
from gateway.mail.limits import DEFAULT_LIMITS, MailLimits
from gateway.mail.message import MessageHeader, parse_header_section
from gateway.smtp.framing import DataFraming
from gateway.smtp.headers import HeaderCollector


@attrs.frozen
class Refusal:
    """A reply that ends the message (sent after the client's final dot)."""

    code: int
    status: str
    text: str


TOO_BIG = Refusal(552, "5.3.4", "Message size exceeds fixed maximum message size")
HEADER_TOO_BIG = Refusal(552, "5.3.4", "Message header section exceeds the size limit")
BARE_NEWLINE = Refusal(550, "5.6.0", "Message contains bare CR or LF characters; lines must end with CRLF")
NUL_OCTET = Refusal(550, "5.6.0", "Message contains NUL characters, which RFC 5322 does not allow")
LINE_OVER_998 = Refusal(550, "5.6.0", "Message contains a line longer than 998 characters (RFC 5322 section 2.1.1)")


def judge_header_section(section: bytes, stopped_at: bytes = b"", limits: MailLimits = DEFAULT_LIMITS) -> MessageHeader:
    """
    The stored header section judged by the one mail grammar (L{gateway.mail.message}): the
    reading every policy, the relay guard and the recorded sending mailbox come from.  Linear
    and bounded, but up to ``max_header_size`` of work: the SMTP layer runs it in a thread.
    Raises L{gateway.mail.errors.MailRefusal} (``550 5.6.0`` / ``552 5.3.4``).
    """
    return parse_header_section(section, limits, first_body_line=stopped_at)


# Bodies up to this size are also kept in memory (references to the chunks the writer already
# holds, no copy), so end-of-data policies can read them without a flush to disk first.
SMALL_BODY = 128 * 1024


class MessageIntake:
    """
    Streams one message into ``writer``.

    ``make_prefix(names)`` is called once, when the header section is complete, with the set of
    lower-cased header names the message has; it returns ``(received, added)``: the gateway's
    Received line(s) and any Message-ID/Date lines to add.  The stored header section is then
    ``received + added + the client's header lines + CRLF``; ``header_section`` keeps it (it is
    what policies see and what header edits rewrite) and ``received`` is kept apart so edits
    never touch the gateway's own trace header.

    Once ``refusal`` is set, nothing more is written (the caller aborts the writer) and the rest
    of the data is only scanned for its end.
    """

    def __init__(self, writer, limits: Limits, make_prefix: Callable[[set], tuple[bytes, bytes]]) -> None:
        self.writer = writer
        self.framing = DataFraming(limits.max_data_line)
        self._collector = HeaderCollector(limits.max_header_size)
        self._max_size = limits.max_message_size
        self._make_prefix = make_prefix
        self.size = 0
        self.refusal: Optional[Refusal] = None
        self.received = b""
        self.header_section: Optional[bytes] = None
        self._body: Optional[list] = []
        self._body_size = 0

    @property
    def line_too_long(self) -> bool:
        return self.framing.line_too_long

    def feed(self, data: bytes) -> Optional[bytes]:
        """
        Take raw bytes from the client.  Returns None while the data continues, else the bytes
        after the end-of-data line (the caller treats them as the next commands).  The caller
        must check L{line_too_long} after every call and close the session if it is set.
        """
        content, rest = self.framing.feed(data)
        if self.framing.line_too_long:
            return None
        if content:
            self._content(content)
        if rest is not None:
            self._ended()
        return rest

    def _refuse(self, refusal: Refusal) -> None:
        if self.refusal is None:
            self.refusal = refusal

    def _content(self, content: bytes) -> None:
        self.size += len(content)
        if self.refusal is not None:
            return
        if self.framing.bare_newline:
            return self._refuse(BARE_NEWLINE)
        if self.framing.nul:
            return self._refuse(NUL_OCTET)
        if self.framing.line_over_998:
            return self._refuse(LINE_OVER_998)
        if self.size > self._max_size:
            return self._refuse(TOO_BIG)
        if self.header_section is None:
            found = self._collector.feed(content)
            if found is None:
                if self._collector.overflowed:
                    self._refuse(HEADER_TOO_BIG)
                return
            self._write_header(*found)
            return
        self._write_body(content)

    def _write_body(self, content: bytes) -> None:
        self.writer.write(content)
        if self._body is not None:
            self._body_size += len(content)
            if self._body_size <= SMALL_BODY:
                self._body.append(content)
            else:
                self._body = None

    @property
    def small_body(self) -> Optional[bytes]:
        """The whole body when it is small (see SMALL_BODY), else None (read it from the spool)."""
        return None if self._body is None else b"".join(self._body)

    def _ended(self) -> None:
        if self.refusal is None and self.header_section is None:
            self._write_header(*self._collector.finish_at_end())

    def _write_header(self, header_lines: bytes, body: bytes) -> None:
        self.received, added = self._make_prefix(self._collector.names)
        self.header_section = self.received + added + header_lines + b"\r\n"
        self.writer.write(self.header_section)
        if body:
            self._write_body(body)

    @property
    def stopped_at(self) -> bytes:
        """The line that ended the header section when it was not the empty line (else b"")."""
        return self._collector.stopped_at

    @property
    def client_header_lines(self) -> bytes:
        """The stored header section without the Received line and the separator."""
        assert self.header_section is not None
        return self.header_section[len(self.received):-2]


__all__ = [
    "MessageIntake", "Refusal", "TOO_BIG", "HEADER_TOO_BIG", "BARE_NEWLINE", "NUL_OCTET", "LINE_OVER_998",
    "judge_header_section",
]
