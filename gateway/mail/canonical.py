"""
The canonical form of a mailbox: one spelling per mailbox, used wherever addresses are compared,
counted or recorded (pattern matching, rate-limit keys, recipient sets, the recorded sending
mailbox).

Exchange Online treats addresses case-insensitively and ignores a quoted local part that did
not need quoting, so the canonical form is:

- the local part lower-cased, unquoted when it is a dot-atom (``"Bob"`` is ``bob``), else in
  quotes with ``\\`` and ``"`` escaped;
- the domain lower-cased, without a final dot (``Corp.Example.`` is ``corp.example``);
- a ``+tag`` is kept: it is part of the address.  L{mailbox_key} drops it, for the questions
  where ``local+tag@domain`` must count as ``local@domain`` (rate limits, deny rules).
"""

from __future__ import annotations

import re

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = re.compile(r"[" + _ATEXT + r"]+(?:\.[" + _ATEXT + r"]+)*\Z")


def is_dot_atom(text: str) -> bool:
    return _DOT_ATOM.match(text) is not None


def quote_local(local: str) -> str:
    """The local part as it must be written: bare when a dot-atom, else a quoted string."""
    if is_dot_atom(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def canonical_parts(local: str, domain: str) -> tuple[str, str]:
    """(local, domain) of an already parsed address in canonical case, without the final dot."""
    domain = domain.lower()
    if domain.endswith(".") and not domain.endswith(".."):
        domain = domain[:-1]
    return local.lower(), domain


def canonical_address(local: str, domain: str) -> str:
    """The canonical spelling of the parsed address ``local@domain`` (see the module docstring)."""
    local, domain = canonical_parts(local, domain)
    return quote_local(local) + "@" + domain


__all__ = ["is_dot_atom", "quote_local", "canonical_parts", "canonical_address"]
