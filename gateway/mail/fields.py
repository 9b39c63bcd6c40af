"""
Header sections as fields: what is a field line, what continues one, what ends the section,
and editing fields on the raw bytes.

One set of rules for everyone (intake's end-of-header detection, the relay guard, the policies'
edits, the Graph deliverer's rewrite):

- a field line is a name of printable ASCII other than ``:`` (RFC 5322 §2.2), optionally
  followed by spaces/tabs (the obsolete syntax of §4.5), then ``:``;
- a line starting with a space or tab continues the previous field;
- the section ends at the first empty line, or just before the first line that is neither
  (intake then inserts the empty line itself, so the stored message is unambiguous).

An mbox ``From `` line ends the section by these rules but is taken as a header by other
parsers; L{is_from_line} lets the judge refuse it.
"""

from __future__ import annotations

import email.policy
import re
from typing import Iterable, Optional, Protocol

import attrs

# Name, then the optional obsolete white space, then the colon.  Linear: the name class
# excludes space, tab and colon, so each part ends where the next starts.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)([ \t]*):")
#: The opening of a field line: group 1 the name, group 2 any obsolete white space before the colon.
FIELD_OPENING = _FIELD
_POLICY = email.policy.SMTP
# Where one field ends and the next line starts: a CRLF not followed by a space or tab (nor by
# nothing: the section's last CRLF ends its last field).  A one-character look-ahead: linear.
_FIELD_END = re.compile(rb"\r\n(?![ \t])")


@attrs.frozen
class Field:
    """
    One header field exactly as in the section: ``raw`` includes folding and the final CRLF.
    ``obsolete_space`` is set when white space stands between the name and the colon.
    """

    name: bytes
    raw: bytes
    obsolete_space: bool = False

    @property
    def lname(self) -> str:
        """The lower-cased name as text (field names are ASCII)."""
        return self.name.decode("ascii").lower()

    @property
    def value(self) -> bytes:
        """The value after the colon, unfolded (CRLFs removed), not stripped."""
        colon = self.raw.index(b":", len(self.name))
        return self.raw[colon + 1:].replace(b"\r\n", b"")

    @property
    def text(self) -> str:
        """The unfolded value as text: UTF-8, undecodable bytes replaced, outer white space stripped."""
        return self.value.decode("utf-8", "replace").strip(" \t")


def field_name(line: bytes | bytearray, start: int = 0, end: Optional[int] = None) -> Optional[tuple[bytes, bool]]:
    """``(name, obsolete_space)`` if the line at ``start`` opens a field, else None."""
    m = _FIELD.match(line, start, len(line) if end is None else end)
    if m is None:
        return None
    return bytes(m.group(1)), bool(m.group(2))


def is_continuation(line: bytes) -> bool:
    return line[:1] in (b" ", b"\t")


def is_from_line(line: bytes) -> bool:
    """An mbox separator (``From sender date``): a header to some parsers, body to others."""
    return line[:5].lower() == b"from " and field_name(line) is None


class TooManyFields(ValueError):
    """More fields than the ``limit`` given to L{split_fields}."""


def field_pieces(header_lines: bytes, limit: Optional[int] = None) -> list[bytes]:
    """
    The fields of ``header_lines`` as L{split_fields} cuts them, without their final CRLF and
    not yet made L{Field}s (for the judge, which reads each field once as it builds it).

    With ``limit``, cutting stops after ``limit + 1`` fields: a section with more than
    ``limit`` fields then gives more than ``limit`` pieces (the last one the uncut rest), so
    refusing it costs what its first fields cost, not its whole length.
    """
    if not header_lines:
        return []
    if type(header_lines) is not bytes:
        header_lines = bytes(header_lines)
    maxsplit = limit + 1 if limit is not None and limit >= 0 else 0
    pieces = _FIELD_END.split(header_lines, maxsplit)
    if pieces[-1] == b"":
        pieces.pop()
    return pieces


def split_fields(header_lines: bytes, limit: Optional[int] = None) -> list[Field]:
    """
    Header lines (CRLF-terminated, no empty separator line) as fields.  A line that is neither
    a field nor a continuation becomes a field with an empty name; L{gateway.mail.message}
    refuses such sections, and callers editing them keep the line as it is.  With ``limit``,
    L{TooManyFields} is raised when there are more fields than that.

    A field ends at every CRLF that no space or tab follows, so one C-level split cuts the
    section into fields (folds included) instead of a Python step per line; a first line that
    starts with white space opens a field of its own, as it has nothing to continue.
    """
    pieces = field_pieces(header_lines, limit)
    if limit is not None and pieces and len(pieces) > limit:
        raise TooManyFields(limit)
    fields: list[Field] = []
    match = _FIELD.match
    for piece in pieces:
        m = match(piece)
        if m is None:
            fields.append(Field(b"", piece + b"\r\n", False))
        else:
            fields.append(Field(m.group(1), piece + b"\r\n", m.end(2) > m.start(2)))
    return fields


def header_line(name: str, value: str) -> bytes:
    """
    One header line, CRLF-folded, with non-ASCII text as RFC 2047 encoded words — exactly one
    field whatever the value holds.  Used for values the gateway or a policy writes (never to
    read client input), so the SMTP layer, the policy chain and sendmail encode alike.
    """
    value = value.replace("\r", " ").replace("\n", " ")
    return _one_field(_POLICY.fold_binary(name, _POLICY.header_factory(name, value)))


def _one_field(folded: bytes) -> bytes:
    """
    The ``email`` header factory decodes encoded words in the value it is given, so text such
    as ``=?utf-8?q?=0D=0A?=`` comes out as a real line break: a second header, or the end of
    the header section.  Keep exactly one field: every line break becomes a fold, empty lines
    and NULs go.
    """
    parts = folded.replace(b"\x00", b" ").replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    lines = [part for part in parts if part.strip(b" \t")]
    return b"\r\n".join([lines[0]] + [line if line[:1] in (b" ", b"\t") else b" " + line for line in lines[1:]]) + b"\r\n"


class Edit(Protocol):
    """A header edit as policies return it (L{gateway.policy.interfaces.HeaderEdit} is one)."""

    @property
    def action(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> Optional[str]: ...


def apply_edits(header_lines: bytes, edits: Iterable[Edit]) -> bytes:
    """
    ``header_lines`` with ``edits`` (objects with ``action``, ``name``, ``value``) applied in
    order: ``remove`` drops every occurrence, ``replace`` drops them and puts one where the
    first was (or at the end), ``add`` appends.  Fields no edit names stay byte for byte.
    """
    fields = [(f.name.lower(), f.raw) for f in split_fields(header_lines)]
    for edit in edits:
        fields = _apply_edit(fields, edit)
    return b"".join(raw for _, raw in fields)


def _apply_edit(fields: list[tuple[bytes, bytes]], edit: Edit) -> list[tuple[bytes, bytes]]:
    """The (lower-case name, raw bytes) fields after one edit; an unknown action changes nothing."""
    key = edit.name.lower().encode("ascii")
    if edit.action == "add":
        return fields + [(key, header_line(edit.name, edit.value or ""))]
    if edit.action not in ("remove", "replace"):
        return fields
    first = next((i for i, (name, _) in enumerate(fields) if name == key), None)
    kept = [f for f in fields if f[0] != key]
    if edit.action == "replace":
        kept.insert(len(kept) if first is None else first, (key, header_line(edit.name, edit.value or "")))
    return kept


__all__ = ["Field", "TooManyFields", "field_name", "field_pieces", "FIELD_OPENING", "is_continuation", "is_from_line", "split_fields", "header_line", "apply_edits"]
