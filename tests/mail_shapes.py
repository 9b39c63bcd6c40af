"""
Header sections of the expensive shapes from issue 8 (finding 2 and its relatives), at a chosen
size, for the bound tests and the benchmark: each is a complete header section in CRLF form.
"""

from __future__ import annotations


def _folded(unit: bytes, size: int, sep: bytes = b" ") -> bytes:
    per_line = max(1, 70 // (len(unit) + len(sep)))
    line = sep.join([unit] * per_line)
    lines = max(1, size // (len(line) + 3))
    return b"\r\n ".join([line] * lines)


def shapes(size: int) -> dict[str, bytes]:
    """Name → header section of about ``size`` bytes."""
    half = size // 2
    return {
        "encoded-words": b"From: " + _folded(b"=?utf-8?q?a?=", size) + b" <a@b.example>\r\n",
        "address-list": b"To: " + _folded(b"a@b.example,", size) + b" c@d.example\r\n",
        "dotted-local": b"From: " + _folded(b"a.", size, b"") + b"a@b.example\r\n",
        "source-routes": b"To: <" + _folded(b"@a,", size, b"") + b"@a:x@y.example>\r\n",
        "comment-run": b"From: " + _folded(b"(a)", size) + b" a@b.example\r\n",
        "nested-comments": b"From: " + b"(" * half + b")" * half + b" a@b.example\r\n",
        "empty-groups": b"To: " + _folded(b"g:;", size) + b"\r\n",
        "many-fields": b"X-A: b\r\n" * (size // 8) + b"From: a@b.example\r\n",
        "long-display-name": b"From: " + _folded(b"word", size) + b" <a@b.example>\r\n",
        "long-quoted-string": b'From: "' + _folded(b"a", size) + b'" <a@b.example>\r\n',
        "unclosed-quote": b'From: "' + _folded(b"a", size) + b" <a@b.example>\r\n",
        "unclosed-comment": b"From: (" + _folded(b"a", size) + b" <a@b.example>\r\n",
    }
