"""
The explicit bounds of the mail grammar.

Parsing is linear in the input by construction (every loop consumes input, no backtracking
regular expression, no recursion), and these limits keep what a header section can make the
gateway hold or do small and predictable.  Each refusal names the limit it hit.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class MailLimits:
    """
    ``max_fields``: header fields per section (the gateway's own Received included).
    ``max_addresses``: mailboxes and groups per address field.
    ``max_encoded_words``: RFC 2047 encoded words per address field (display names); the 250 KB
    encoded-word From of issue 8 hits this long before any decoding starts.
    ``max_comment_depth``: nesting of ``( ... )`` comments.
    ``max_tokens``: words and symbols per address field (keeps what one field costs in memory
    small: a 1000-address To list needs about 10 per address).
    """

    max_fields: int = 1000
    max_addresses: int = 1000
    max_encoded_words: int = 256
    max_comment_depth: int = 8
    max_tokens: int = 20_000


DEFAULT_LIMITS = MailLimits()

__all__ = ["MailLimits", "DEFAULT_LIMITS"]
