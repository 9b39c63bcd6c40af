"""
Header edits as values: validating them, applying them to a parsed header section, and
formatting address headers so their encoded words stay valid.

Values in L{HeaderEdit} are text.  Address headers built here are already pure ASCII
(``email.utils.formataddr`` encodes a non-ASCII display name as RFC 2047 words and leaves the
address itself alone), so whatever encodes non-ASCII text downstream never has the chance to
encode an address into an encoded word, which would break it.  Unstructured values (Subject,
added headers) may be non-ASCII; they are encoded when the header line is written, and
L{header_line} (from L{gateway.mail.fields}, re-exported here for plugin authors) shows the
encoding the ``email`` package uses for that.
"""

from __future__ import annotations

import copy
import email.policy
from email.utils import formataddr
from typing import Any, Iterable, Optional

from gateway.mail.addresses import decode_unstructured
from gateway.mail.fields import header_line
from gateway.mail.message import MessageHeader
from gateway.policy.interfaces import HeaderEdit

ACTIONS = ("add", "remove", "replace")
_POLICY = email.policy.SMTP


def is_header_name(name: str) -> bool:
    """RFC 5322 field name: printable ASCII except the colon."""
    return bool(name) and all(33 <= ord(c) <= 126 and c != ":" for c in name)


def edit_problem(edit: Any) -> Optional[str]:
    """Why ``edit`` cannot be applied safely, or None when it is fine."""
    if not isinstance(edit, HeaderEdit):
        return f"{edit!r} is not a HeaderEdit"
    if edit.action not in ACTIONS:
        return f"unknown header edit action {edit.action!r}"
    if not isinstance(edit.name, str) or not is_header_name(edit.name):
        return f"{edit.name!r} is not a valid header name"
    if edit.action == "remove":
        return None
    if not isinstance(edit.value, str):
        return f"header edit for {edit.name} has no text value"
    if "\r" in edit.value or "\n" in edit.value or "\x00" in edit.value:
        # A line break in a value would let a policy (or an option feeding one) inject headers.
        return f"header edit for {edit.name} contains a line break or NUL"
    return None


def format_address(display_name: str, address: str) -> str:
    """``Name <addr>`` with the name quoted or RFC 2047-encoded as needed; ASCII only."""
    return formataddr((display_name or "", address))


def header_text(headers: Any, name: str) -> Optional[str]:
    """
    The decoded (encoded words resolved) value of the first ``name`` header, or None.
    ``headers`` is an ``email`` message (``MessageView.headers``) or a judged
    L{gateway.mail.message.MessageHeader}.  Read from the raw field and decoded by the mail
    grammar, never by the ``email`` package's header parser (linear, on any input).
    """
    if headers is None:
        return None
    if isinstance(headers, MessageHeader):
        value = headers.get(name)
    else:
        lname = name.lower()
        value = next((str(v) for n, v in headers.raw_items() if n.lower() == lname), None)
        if value is not None:
            value = value.replace("\r\n", "").replace("\n", "").strip(" \t")
    return None if value is None else decode_unstructured(value)


def apply_edits(headers: Any, edits: Iterable[HeaderEdit]) -> Any:
    """
    A copy of ``headers`` (an ``email.message.Message`` parsed with ``email.policy.SMTP``)
    with ``edits`` applied in order: ``remove`` drops every occurrence, ``replace`` drops them
    and adds one, ``add`` appends (even a second Subject: the edit says so, and refusing it here
    would hide what the SMTP layer will actually write).
    """
    result = copy.deepcopy(headers)
    for edit in edits:
        problem = edit_problem(edit)
        if problem:
            raise ValueError(problem)
        if edit.action in ("remove", "replace"):
            del result[edit.name]
        if edit.action in ("add", "replace"):
            result.set_raw(edit.name, _POLICY.header_factory(edit.name, edit.value))
    return result


__all__ = ["ACTIONS", "is_header_name", "edit_problem", "format_address", "header_text", "apply_edits", "header_line"]
