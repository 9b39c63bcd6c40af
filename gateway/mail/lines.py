"""
The line rules of RFC 5322 that every way into the gateway applies to a message's content.

RFC 5322 §2.1.1 ("Each line of characters MUST be no more than 998 characters ... excluding the
CRLF") and §2.3 (no NUL), which 8BITMIME (RFC 6152 §2) does not lift.  A relay that passed such
a message on would leave the next hop to guess — truncate, fold or split the line; drop or keep
the NUL — so the SMTP intake refuses it at the end of DATA (550 5.6.0), graphsmtp-sendmail
refuses it before anything reaches the spool (EX_DATAERR), and the spool fails a drop-off that
an older sendmail command left anyway.  One limit and one scanner, so the ways in cannot drift
apart.  The scan works on whole blocks with C-level ``bytes`` operations, never a Python step
per line.
"""

from __future__ import annotations

#: The longest line a message may hold, in octets, not counting its CRLF.
MESSAGE_LINE_LIMIT = 998


def has_long_line(block: bytes, limit: int = MESSAGE_LINE_LIMIT) -> bool:
    """
    Whether a CRLF-terminated line in ``block`` (whole lines, ending with CRLF) is longer than
    ``limit`` octets.  Jumps from the last CRLF inside each window of ``limit + 2`` octets to
    the next window: one ``rfind`` per ``limit`` octets, and nothing for a block no longer than
    one window, which cannot hold a long line.
    """
    pos, n, window = 0, len(block), limit + 2
    while n - pos > window:
        j = block.rfind(b"\r\n", pos, pos + window)
        if j < 0:
            return True
        pos = j + 2
    return False


class LineRules:
    """
    The two rules over content that arrives in pieces cut anywhere (a file read in blocks,
    standard input): remembers only the unfinished line, and counts it too, so one endless line
    is found as soon as it is too long.  Read ``nul`` and ``long_line`` after each L{feed};
    call L{finish} at the end (a last line without CRLF).
    """

    def __init__(self, limit: int = MESSAGE_LINE_LIMIT) -> None:
        self.limit = limit
        self.nul = False
        self.long_line = False
        self._tail = b""

    def feed(self, piece: bytes) -> None:
        if not self.nul and b"\0" in piece:
            self.nul = True
        if self.long_line:
            return
        data = self._tail + piece if self._tail else piece
        end = data.rfind(b"\r\n")
        complete, self._tail = (data[:end + 2], data[end + 2:]) if end >= 0 else (b"", data)
        # An unfinished line ending in CR may be a line and the CR of its CRLF (the LF comes next).
        if len(self._tail) - self._tail.endswith(b"\r") > self.limit or has_long_line(complete, self.limit):
            self.long_line = True
            self._tail = b""

    def finish(self) -> None:
        if len(self._tail) > self.limit:
            self.long_line = True
        self._tail = b""


__all__ = ["MESSAGE_LINE_LIMIT", "has_long_line", "LineRules"]
