"""
Log output for operators.

``twistd -n graphsmtp`` logs text to stdout by default.  For log shippers, use
``twistd --logger=gateway.logging.json_observer -n graphsmtp``: one JSON object per line (plain
NDJSON, without the ASCII record separator Twisted's own JSON format puts in front of each
record).  Either way, Twisted's legacy SMTP chatter ("Receiving message for delivery: from=…")
cannot appear: the gateway's protocol runs with ``noisy = False``.
"""

from __future__ import annotations

import sys
from typing import IO, Optional

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer(out: Optional[IO[str]] = None) -> ILogObserver:
    """NDJSON on stdout (or ``out``); the zero-argument form is what ``twistd --logger`` calls."""
    return jsonFileLogObserver(out if out is not None else sys.stdout, recordSeparator="")


__all__ = ["json_observer"]
