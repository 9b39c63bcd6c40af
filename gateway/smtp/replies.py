"""
How refusals become SMTP replies: the text a client may see, and the code and RFC 3463 status
of a policy's verdict or of spool trouble.  Shared by the session, the mail transaction and the
local drop-off judge, so every path answers the same way.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from twisted.python.failure import Failure

from gateway.policy.interfaces import Reject, TempFail
from gateway.smtp.auth import Refusal
from gateway.spool.interfaces import SpoolError

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


def clean_text(text: Any, limit: int = 300) -> str:
    """Reply text from anything: printable ASCII, one line, bounded."""
    text = str(text)
    # Printable ASCII is exactly " " to "~": the usual reply needs no character-by-character pass.
    if not (text.isascii() and text.isprintable()):
        text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text[:limit] or "-"


def verdict_refusal(result: Any) -> Optional[Refusal]:
    """
    The reply for a refusing policy step, or None when the step allows.  A policy's code and
    status are used when they are well-formed and agree with the verdict's class (a Reject can
    never turn into a 2xx or 4xx); otherwise the class default is used.
    """
    verdict = getattr(result, "verdict", result)
    if isinstance(verdict, Reject):
        default_code, default_status, klass = 550, "5.7.1", 5
    elif isinstance(verdict, TempFail):
        default_code, default_status, klass = 451, "4.7.1", 4
    else:
        return None
    code = verdict.code if isinstance(verdict.code, int) and verdict.code // 100 == klass else default_code
    status = verdict.status if _well_formed_status(verdict.status, klass) else default_status
    return Refusal(code, status, clean_text(verdict.text))


def _well_formed_status(status: Any, klass: int) -> bool:
    return isinstance(status, str) and _STATUS.match(status) is not None and status[0] == str(klass)


def spool_refusal(failure: Failure) -> Refusal:
    """Spool trouble is always transient for the client: 452 4.3.1 when the disk is full, else 451 4.3.0."""
    if failure.check(SpoolError) and failure.value.out_of_space:
        return Refusal(452, "4.3.1", "Insufficient system storage, try again later")
    return Refusal(451, "4.3.0", "Local error in processing, try again later")


__all__ = ["Refusal", "clean_text", "verdict_refusal", "spool_refusal"]
