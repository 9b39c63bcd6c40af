"""
The shapes nearly every address field has, read without the tokenizer.

Almost every From/To/Cc a client sends is a list of ``local@domain``, ``<local@domain>``,
``Name Words <local@domain>`` or ``"Quoted Name" <local@domain>`` entries separated by commas.
For those, the general reader of L{gateway.mail.addresses} (tokens, a parser object, a pass over
the display name for addresses it shows) costs about ten times what one regular expression per
entry does, and this is judged for every message the gateway accepts (issue 13).

L{simple_entries} recognises only these shapes, in a form where the general reader's result is
known without running it: ASCII dot-atom local parts, domains whose labels the general reader
accepts, ASCII display names without ``@`` or backslashes (a name with encoded words is handed back
as its words, for the general reader's display-name code to decode and judge), at most one comment per
entry and only at its end (``root@host (Cron Daemon)``; no ``@``, nesting or backslash in it),
no white space inside an address, no empty entries, and few enough characters that no limit can
be reached.
Everything else — including every input the general reader refuses — returns None and goes to
the general reader, so the fast path can change the cost but never the result or the refusal
(C{tests.test_mail_simple} checks both readers against each other on generated fields).

The expressions are linear: possessive quantifiers over disjoint character classes, and one
alternation per entry whose branches each fail within the entry.
"""

from __future__ import annotations

import re
from typing import Optional

# RFC 5322 atext (ASCII); the general tokenizer's atoms add every non-ASCII character.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_LOCAL = rf"[{_ATEXT}]++(?:\.[{_ATEXT}]++)*+"
_DOMAIN = r"[A-Za-z0-9_][A-Za-z0-9_\-]*+(?:\.[A-Za-z0-9_][A-Za-z0-9_\-]*+)*+"
# ASCII only: a name with other characters may show an address once folded as a reader sees
# it (a fullwidth @, an invisible character inside), which only the general reader checks.
_NAME_ATOM = rf"[{_ATEXT}]++"
_ENTRY = re.compile(
    r"[ \t]*+(?:"
    rf"(?P<local>{_LOCAL})@(?P<domain>{_DOMAIN})"
    r"|(?:"
    rf"(?P<words>{_NAME_ATOM}(?:[ \t]++{_NAME_ATOM})*+)"
    r'|"(?P<quoted>[^"\\\x00-\x1f\x7f@\x80-\U0010ffff]*+)"'
    r")?+[ \t]*+"
    rf"<(?P<alocal>{_LOCAL})@(?P<adomain>{_DOMAIN})>"
    r")(?:[ \t]*+\((?P<comment>[^()\\@\x00\r\n\x80-\U0010ffff]*+)\))?+[ \t]*+(?:,|\Z)"
)
_SPACES = re.compile(r"[ \t]++")

#: Longest local part and domain the general reader accepts (gateway.mail.addresses).
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255


#: One entry: display name (None when the phrase still has encoded words to decode), local
#: part, domain, and the phrase as (token kind, text) pairs when it has encoded words.
Entry = tuple[Optional[str], str, str, Optional[tuple[tuple[str, str], ...]]]


def simple_entries(value: str, max_addresses: int, max_tokens: int) -> Optional[list[Entry]]:
    """
    ``(display_name, local, domain, phrase)`` for each entry of the unfolded address-field
    ``value``, exactly as the general reader would read its mailboxes, or None when ``value`` is
    not entirely made of the simple shapes (the caller then runs the general reader).

    A display name with an RFC 2047 encoded word comes back undecoded: ``display_name`` is None
    and ``phrase`` holds its words as the general tokenizer would give them, for the general
    reader's own display-name code to decode and check (it may refuse them).  Encoded words
    anywhere else (local part, comment) leave the whole value to the general reader.

    ``max_tokens`` bounds the words and symbols of a field: every token is at least one
    character, so a value no longer than that cannot reach it.  A value with more than
    ``max_addresses`` entries is left to the general reader, which refuses it.
    """
    n = len(value)
    if n > max_tokens:
        return None
    encoded = "=?" in value
    found: list[Entry] = []
    pos = 0
    match = _ENTRY.match
    while pos < n:
        m = match(value, pos)
        if m is None:
            return None
        entry = _entry(m) if not encoded else _encoded_entry(m)
        if entry is None:
            return None
        found.append(entry)
        if len(found) > max_addresses:
            return None
        pos = m.end()
    return found or None


def _entry(m: re.Match) -> Optional[Entry]:
    """One matched entry of a value without encoded words."""
    local, domain, words, quoted, alocal, adomain, _ = m.groups()
    if local is None:
        local, domain = alocal, adomain
        if words is not None:
            name = words if "\t" not in words and "  " not in words else _SPACES.sub(" ", words)
        else:
            name = quoted or ""
    else:
        name = ""
    if len(local) > MAX_LOCAL_PART or len(domain) > MAX_DOMAIN:
        return None
    return name, local, domain, None


def _encoded_entry(m: re.Match) -> Optional[Entry]:
    """One matched entry of a value with encoded words: only its display name may hold them."""
    entry = _entry(m)
    if entry is None or "=?" in entry[1] or "=?" in (m.group("comment") or ""):
        return None
    name = entry[0]
    if name is None or "=?" not in name:
        return entry
    words, quoted = m.group("words"), m.group("quoted")
    if words is not None:
        phrase = tuple(("atom", word) for word in _SPACES.split(words))
    else:
        phrase = (("quoted", quoted),)
    return None, entry[1], entry[2], phrase


def simple_addr_spec(text: str) -> Optional[tuple[str, str]]:
    """``(local, domain)`` of a bare ``local@domain`` in the simple shape, else None."""
    m = _ADDR_SPEC.fullmatch(text)
    if m is None or "=?" in text:
        return None
    local, domain = m.groups()
    if len(local) > MAX_LOCAL_PART or len(domain) > MAX_DOMAIN:
        return None
    return local, domain


_ADDR_SPEC = re.compile(rf"({_LOCAL})@({_DOMAIN})")

__all__ = ["Entry", "simple_entries", "simple_addr_spec"]
