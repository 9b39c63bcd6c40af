"""
Queue ids: unique, roughly time-sortable, and safe as file names on any file system.

Format: 19 characters of Crockford base32 (digits and upper-case letters without I, L, O, U):
11 characters of the microsecond POSIX time followed by 8 characters (40 bits) of randomness.
The alphabet is in ASCII order, so sorting ids sorts them by acceptance time, which is what an
admin listing the queue wants and what keeps the runner's oldest-first order cheap.  Two
processes (the daemon and the sendmail command) can mint ids at the same microsecond; the
random part makes a collision negligible and the spool's O_EXCL file creation makes it harmless.
"""

from __future__ import annotations

import random
import re
from typing import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_CHARS = 11
_RANDOM_CHARS = 8
QUEUE_ID_LENGTH = _TIME_CHARS + _RANDOM_CHARS
_QUEUE_ID_RE = re.compile(f"^[{_ALPHABET}]{{{QUEUE_ID_LENGTH}}}$")


def _encode(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_ALPHABET[number & 31])
        number >>= 5
    return "".join(reversed(chars))


def new_queue_id(now: float, randbits: Callable[[int], int] = random.getrandbits) -> str:
    """
    A fresh queue id for a message accepted at POSIX time ``now``.  The random part needs to
    be unique, not secret, so it comes from the fast PRNG (seeded from the OS per process)
    rather than a system call on the hot path.
    """
    micros = int(now * 1_000_000) & ((1 << (5 * _TIME_CHARS)) - 1)
    random_part = randbits(40)
    return _encode(micros, _TIME_CHARS) + _encode(random_part, _RANDOM_CHARS)


def is_queue_id(text: str) -> bool:
    """True when ``text`` has the shape of a queue id (so it is safe to use in a path)."""
    return bool(_QUEUE_ID_RE.match(text))


__all__ = ["new_queue_id", "is_queue_id", "QUEUE_ID_LENGTH"]
