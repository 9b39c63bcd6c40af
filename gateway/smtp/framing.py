"""
The DATA phase as a byte stream: end-of-data detection, dot-unstuffing and framing checks on
whole chunks, never line by line in Python.

Why: Twisted's stock server hands every body line to Python code (and to every recipient's
message object); that caps intake far below what the disk can take.  Here a chunk is scanned
with a handful of C-level ``bytes`` operations (``find``, ``rfind``, ``count``, ``replace``),
so a 1 MB message costs a few passes over memory.

Rules (RFC 5321 §4.1.1.4, §4.5.2), deliberately strict because the gateway relays onwards:

* Lines end with CRLF only.  Only the exact line ``.`` after a CRLF (``CRLF . CRLF``, or ``.``
  CRLF as the very first line) ends the data.  ``LF.LF``, ``CR.CR`` and every other
  SMTP-smuggling variant stays inside the message — and because such a message contains bare
  CR or LF it is then refused as a whole (see ``bare_newline``).
* A leading dot is removed from every other line (dot-unstuffing).
* ``bare_newline`` becomes true if any CR or LF occurs other than as part of CRLF.
* ``line_too_long`` becomes true as soon as a line (without its CRLF) is longer than
  ``max_line`` — including a line still being received, so a client that never sends CRLF
  cannot grow the buffer beyond ``max_line`` bytes.  This is the transport bound: the session
  is closed.
* ``nul`` becomes true if the message contains a NUL octet, and ``line_over_998`` if a line of
  the (unstuffed) message is longer than 998 octets without its CRLF.  RFC 5322 §2.1.1 and
  §2.3 allow neither in a message (nor does 8BITMIME, RFC 6152 §2), and a relay that passes them
  on leaves it to the next hop to guess (truncate, fold or split the line; drop or keep the
  NUL).  The intake refuses such a message after its final dot; the session goes on.
"""

from __future__ import annotations

from typing import Optional, Union

from gateway.mail.lines import MESSAGE_LINE_LIMIT, has_long_line

_END = b"\r\n.\r\n"


class DataFraming:
    """
    Feed raw DATA bytes in with L{feed}; get back the unstuffed message content of the complete
    lines seen so far and, once the terminating line arrives, the bytes that follow it (the next
    pipelined commands).

    Invariant: the internal carry always starts at the beginning of a line and contains no
    CRLF, so the content handed out always ends with CRLF and starts at a line start.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.bare_newline = False
        self.line_too_long = False
        self.nul = False
        self.line_over_998 = False
        self._carry = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        """
        Returns ``(content, rest)``: ``content`` is unstuffed message bytes (possibly empty);
        ``rest`` is None while the data continues, else the bytes after the end-of-data line.
        After ``line_too_long`` is set, the caller must stop feeding (the session is closed).
        """
        buf: Union[bytes, bytearray]
        if self._carry:
            # Only the carry's last byte can begin a CRLF; search from there.
            search_from = len(self._carry) - 1
            self._carry += data
            buf = self._carry
        else:
            search_from = 0
            buf = data
        if buf[:3] == b".\r\n":
            end = 0
        else:
            found = buf.find(_END, search_from)
            end = found + 2 if found >= 0 else -1
        if end >= 0:
            block = bytes(buf[:end])
            rest = bytes(buf[end + 3:])
            self._carry = bytearray()
            return self._content(block), rest
        cut = buf.rfind(b"\r\n", search_from)
        if cut < 0:
            if buf is data:
                self._carry = bytearray(data)
            if len(self._carry) > self.max_line + 1:
                # +1: the CR of a legitimate CRLF may be the last byte received so far.
                self.line_too_long = True
            return b"", None
        block = bytes(buf[:cut + 2])
        self._carry = bytearray(buf[cut + 2:])
        if len(self._carry) > self.max_line + 1:
            self.line_too_long = True
        return self._content(block), None

    def _content(self, block: bytes) -> bytes:
        """Check and unstuff ``block``: whole lines, starting at a line start, ending in CRLF."""
        if not block:
            return block
        # One scan for long lines in the usual case: a block with no line over 998 octets has
        # none over ``max_line`` either when that is larger, and none after unstuffing (which
        # only shortens lines); the exact checks run only for a block that has one.
        long_lines = has_long_line(block, min(self.max_line, MESSAGE_LINE_LIMIT))
        if long_lines and has_long_line(block, self.max_line):
            self.line_too_long = True
        if not self.bare_newline:
            crlf = block.count(b"\r\n")
            if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
                self.bare_newline = True
        if not self.nul and b"\0" in block:
            self.nul = True
        if block[:1] == b".":
            block = block[1:]
        block = block.replace(b"\r\n.", b"\r\n")
        if long_lines and not self.line_over_998 and has_long_line(block, MESSAGE_LINE_LIMIT):
            self.line_over_998 = True
        return block


__all__ = ["DataFraming", "MESSAGE_LINE_LIMIT"]
