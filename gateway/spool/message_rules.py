"""
The octet rules SMTP intake applies at the end of DATA (``550 5.6.0``), applied to a message
file that reached the spool another way: a sendmail drop-off in incoming/.

RFC 5322 §2.1.1 and §2.3 allow no line longer than 998 octets (without its CRLF) and no NUL in
a message; a gateway that passes either on leaves the next hop to guess (truncate, fold or
split the line; drop or keep the NUL).  The SMTP path refuses such a message at intake
(L{gateway.smtp.framing}), with the same scanner (L{gateway.mail.lines}); a drop-off is already acknowledged when the daemon sees it, so the
import fails it with the reason instead (see L{gateway.spool.incoming}).  The file is read once,
in blocks, and digested in the same pass when its record has no digest yet.  Blocking: a spool
thread.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import attrs

from gateway.mail.lines import MESSAGE_LINE_LIMIT, LineRules
from gateway.spool.record import DIGEST_ALGORITHM

LINE_LIMIT = MESSAGE_LINE_LIMIT
NUL_IN_MESSAGE = "message contains NUL characters, which RFC 5322 does not allow"
LINE_OVER_LIMIT = f"message contains a line longer than {LINE_LIMIT} characters (RFC 5322 section 2.1.1)"
_READ = 1024 * 1024


@attrs.frozen
class MessageInspection:
    """What one pass over a message file found: its digest (if asked for) and the first broken rule."""

    digest: Optional[str]
    problem: Optional[str]


def inspect_message_file(path: str, digest: bool) -> MessageInspection:
    """Read ``path`` once: its ``"sha256:<hex>"`` digest if ``digest``, and the first rule it breaks."""
    rules = LineRules()
    hasher = hashlib.new(DIGEST_ALGORITHM) if digest else None
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ), b""):
            rules.feed(block)
            if hasher is not None:
                hasher.update(block)
    rules.finish()
    problem = NUL_IN_MESSAGE if rules.nul else LINE_OVER_LIMIT if rules.long_line else None
    return MessageInspection(f"{DIGEST_ALGORITHM}:{hasher.hexdigest()}" if hasher is not None else None, problem)


__all__ = ["inspect_message_file", "MessageInspection", "LINE_LIMIT", "NUL_IN_MESSAGE", "LINE_OVER_LIMIT"]
