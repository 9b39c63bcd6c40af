"""
RFC 2047 encoded words (``=?charset?Q?text?=``): decoded strictly where the gateway judges
(display names: an unknown charset, undecodable text or a decoded line break or NUL is refused)
and leniently where it only shows text (Subject, comments: a bad word stays as written).

Split from L{gateway.mail.addresses}, which uses both and re-exports them.
"""

from __future__ import annotations

import binascii
import codecs
import re

from gateway.mail.errors import MalformedHeader

#: One encoded word; charset and language bounded, the text a possessive run (linear).
ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,64})(?:\*[^?\s]{0,32})?\?([bBqQ])\?([^?\s]*+)\?=")


def decode_encoded_word(charset: str, encoding: str, text: str, what: str) -> str:
    """One RFC 2047 encoded word as text; a word that decodes to a line break or NUL is refused."""
    try:
        codecs.lookup(charset)
    except LookupError:
        raise MalformedHeader(f"{what}: encoded word in unknown charset {charset[:32]!r}") from None
    try:
        if encoding in "bB":
            data = binascii.a2b_base64(text + "=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.encode("ascii", "replace"), header=True)
    except (binascii.Error, ValueError):
        raise MalformedHeader(f"{what}: undecodable encoded word") from None
    decoded = data.decode(charset, "replace")
    if "\r" in decoded or "\n" in decoded or "\x00" in decoded:
        raise MalformedHeader(f"{what}: an encoded word decodes to a line break or NUL")
    return decoded


def decode_unstructured(text: str) -> str:
    """
    An unstructured value (Subject, Comments) with its RFC 2047 encoded words decoded, the way
    mail readers show it: white space between two adjacent encoded words disappears, a word
    that cannot be decoded stays as written.  Never raises; the result may hold line breaks
    (callers that write it back must fold or refuse them).
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    pos = 0
    previous_end = -1
    for m in ENCODED_WORD.finditer(text):
        between = text[pos:m.start()]
        try:
            decoded = _decode_word_leniently(m.group(1), m.group(2), m.group(3))
        except (LookupError, ValueError):
            decoded = m.group(0)
        if previous_end >= 0 and not between.strip(" \t"):
            between = ""
        out.append(between)
        out.append(decoded)
        pos = previous_end = m.end()
    out.append(text[pos:])
    return "".join(out)


def _decode_word_leniently(charset: str, encoding: str, text: str) -> str:
    codecs.lookup(charset)
    if encoding in "bB":
        data = binascii.a2b_base64(text + "=" * (-len(text) % 4))
    else:
        data = binascii.a2b_qp(text.encode("ascii", "replace"), header=True)
    return data.decode(charset, "replace")


__all__ = ["ENCODED_WORD", "decode_encoded_word", "decode_unstructured"]
