"""
The DATA phase as a byte stream: end-of-data detection, dot-unstuffing and framing checks on
whole chunks, never line by line in Python.

Why: Twisted's stock server hands every body line to Python code (and to every recipient's
message object); that caps intake far below what the disk can take.  Here a chunk is scanned
with a handful of C-level ``bytes`` operations, so a 1 MB message costs a few passes over
memory — and the passes are chosen by what they cost, since at 1 MB they are most of the
daemon's CPU per message.  ``bytes.find`` of one octet is ``memchr`` (about a hundredth of a
nanosecond per octet here); ``find``/``count``/``replace`` of two or more octets walk the block
in short hops (about a nanosecond per octet on mail text, where every 80th octet is a CRLF).
So, per block of whole lines:

* the end marker and dot-unstuffing need a line that starts with a dot; dots are found with
  ``memchr`` and only a dot right after CRLF counts (L{first_dot_line}); a body without dots
  (base64 has none) or with a few in its header section never pays for a search of CRLF ".",
  and ``replace`` runs only when a stuffed line is there;
* bare CR / LF: one ``replace`` of CRLF and two ``memchr`` (L{has_bare_newline}), with no
  Python object per line;
* line lengths: L{gateway.mail.lines.has_long_line}, the scanner every way in shares;
* NUL: ``memchr``.

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

# How many dots L{first_dot_line} hops over one ``memchr`` at a time before one ``find`` of
# CRLF "." takes the rest of the block: a body with no dots, or a few in its header section,
# costs almost nothing; text full of full stops costs the one search it always did.
_DOT_HOPS = 16


def first_dot_line(buf: Union[bytes, bytearray], stop: int) -> int:
    """
    The offset of the first line of ``buf[:stop]`` (which starts at a line start) that begins
    with a dot, or -1.
    """
    if buf[:1] == b"." and stop > 0:
        return 0
    pos = buf.find(b".", 1, stop)
    for _ in range(_DOT_HOPS):
        if pos < 0:
            return -1
        if pos >= 2 and buf[pos - 2:pos] == b"\r\n":
            return pos
        pos = buf.find(b".", pos + 1, stop)
    if pos < 0:
        return -1
    found = buf.find(b"\r\n.", pos - 2, stop)
    return found + 2 if found >= 0 else -1


def end_line(buf: Union[bytes, bytearray], dot: int, stop: int) -> int:
    """The offset of the end-of-data line ``.`` in ``buf[:stop]``, given its first dot-line ``dot``, or -1."""
    if buf.startswith(b".\r\n", dot, stop):
        return dot
    found = buf.find(_END, dot, stop)
    return found + 2 if found >= 0 else -1


def has_bare_newline(block: bytes) -> bool:
    """
    Whether ``block`` holds a CR or LF other than in a CRLF.

    With every CRLF taken out (``replace`` finds them all: two CRLFs cannot overlap), any CR
    or LF left is a bare one, and ``memchr`` finds it.  Not ``splitlines``: it made a bytes
    object per line (about 800 per 64 KB read), which cost the daemon far more with large
    messages than a loop alone shows (issue 13; the figures are in docs/benchmarks.md).  The
    copy is at most as large as ``block``, whatever its size.
    """
    rest = block.replace(b"\r\n", b"")
    return b"\r" in rest or b"\n" in rest


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
            # Only the carry's last byte can begin a CRLF; search from there.  The carry is a
            # bytearray so that a line arriving in many small pieces is not copied again each time.
            search_from = len(self._carry) - 1
            self._carry += data
            buf = self._carry
        else:
            search_from = 0
            buf = data
        cut = buf.rfind(b"\r\n", search_from)
        if cut < 0:
            if buf is data:
                self._carry = bytearray(data)
            if len(self._carry) > self.max_line + 1:
                # +1: the CR of a legitimate CRLF may be the last byte received so far.
                self.line_too_long = True
            return b"", None
        lines_end = cut + 2
        dot = first_dot_line(buf, lines_end)
        end = -1 if dot < 0 else end_line(buf, dot, lines_end)
        stop = lines_end if end < 0 else end
        # The whole lines before the end, as bytes, copied once (not at all when ``data`` is them).
        block = data[:stop] if buf is data else bytes(memoryview(buf)[:stop])
        if end >= 0:
            # What follows the end-of-data line is the next commands.
            rest = bytes(buf[end + 3:])
            self._carry = bytearray()
            return self._content(block, stuffed=dot < end), rest
        self._carry = bytearray(buf[lines_end:])
        if len(self._carry) > self.max_line + 1:
            self.line_too_long = True
        return self._content(block, stuffed=dot >= 0), None

    def _content(self, block: bytes, stuffed: bool) -> bytes:
        """
        Check ``block`` (whole lines, starting at a line start, ending in CRLF) and unstuff it
        when ``stuffed`` (it has a line starting with a dot).
        """
        if not block:
            return block
        # One scan for long lines in the usual case: a block with no line over 998 octets has
        # none over ``max_line`` either when that is larger, and none after unstuffing (which
        # only shortens lines); the exact checks run only for a block that has one.
        long_lines = has_long_line(block, min(self.max_line, MESSAGE_LINE_LIMIT))
        if long_lines and has_long_line(block, self.max_line):
            self.line_too_long = True
        if not self.bare_newline and has_bare_newline(block):
            self.bare_newline = True
        if not self.nul and b"\0" in block:
            self.nul = True
        if stuffed:
            if block[:1] == b".":
                block = block[1:]
            block = block.replace(b"\r\n.", b"\r\n")
        if long_lines and not self.line_over_998 and has_long_line(block, MESSAGE_LINE_LIMIT):
            self.line_over_998 = True
        return block


__all__ = ["DataFraming", "MESSAGE_LINE_LIMIT", "first_dot_line", "end_line", "has_bare_newline"]
