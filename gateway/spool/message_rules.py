"""
The octet rules SMTP intake applies at the end of DATA (``550 5.6.0``), applied to a message
file that reached the spool another way: a sendmail drop-off in incoming/.

RFC 5322 §2.1.1 and §2.3 allow no line longer than 998 octets (without its CRLF) and no NUL in
a message; a gateway that passes either on leaves the next hop to guess (truncate, fold or
split the line; drop or keep the NUL).  The SMTP path refuses such a message at intake
(L{gateway.smtp.framing}); a drop-off is already acknowledged when the daemon sees it, so the
import fails it with the reason instead (see L{gateway.spool.incoming}).  The file is read once,
in blocks, and digested in the same pass when its record has no digest yet.  Blocking: a spool
thread.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import attrs

from gateway.spool.accept import DIGEST_ALGORITHM

# RFC 5322 §2.1.1: "Each line of characters MUST be no more than 998 characters ... excluding the
# CRLF."  The same limit as gateway.smtp.framing.MESSAGE_LINE_LIMIT (spool does not import smtp).
LINE_LIMIT = 998
NUL_IN_MESSAGE = "message contains NUL characters, which RFC 5322 does not allow"
LINE_OVER_LIMIT = f"message contains a line longer than {LINE_LIMIT} characters (RFC 5322 section 2.1.1)"
_READ = 1024 * 1024


@attrs.frozen
class MessageInspection:
    """What one pass over a message file found: its digest (if asked for) and the first broken rule."""

    digest: Optional[str]
    problem: Optional[str]


class _LineRules:
    """Fed the file block by block; remembers only the current line's tail (at most a window)."""

    def __init__(self) -> None:
        self.nul = False
        self.long_line = False
        self._tail = b""

    def feed(self, block: bytes) -> None:
        if not self.nul and b"\0" in block:
            self.nul = True
        if self.long_line:
            return
        data = self._tail + block
        end = data.rfind(b"\r\n")
        complete, self._tail = (data[:end + 2], data[end + 2:]) if end >= 0 else (b"", data)
        # A tail of LIMIT + 1 octets may still be LIMIT octets and a CR whose LF comes next.
        if len(self._tail) > LINE_LIMIT + 1 or _has_long_line(complete):
            self.long_line = True
            self._tail = b""

    def finish(self) -> Optional[str]:
        if len(self._tail) > LINE_LIMIT:  # a last line without CRLF
            self.long_line = True
        if self.nul:
            return NUL_IN_MESSAGE
        return LINE_OVER_LIMIT if self.long_line else None


def _has_long_line(complete: bytes) -> bool:
    """
    Whether a CRLF-terminated line in ``complete`` (which ends with CRLF) is over the limit:
    one ``rfind`` per window of LIMIT + 2 octets, not one Python step per line.
    """
    pos, n, window = 0, len(complete), LINE_LIMIT + 2
    while n - pos > window:
        j = complete.rfind(b"\r\n", pos, pos + window)
        if j < 0:
            return True
        pos = j + 2
    return False


def inspect_message_file(path: str, digest: bool) -> MessageInspection:
    """Read ``path`` once: its ``"sha256:<hex>"`` digest if ``digest``, and the first rule it breaks."""
    rules = _LineRules()
    hasher = hashlib.new(DIGEST_ALGORITHM) if digest else None
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ), b""):
            rules.feed(block)
            if hasher is not None:
                hasher.update(block)
    return MessageInspection(f"{DIGEST_ALGORITHM}:{hasher.hexdigest()}" if hasher is not None else None,
                             rules.finish())


__all__ = ["inspect_message_file", "MessageInspection", "LINE_LIMIT", "NUL_IN_MESSAGE", "LINE_OVER_LIMIT"]
