"""
The MIME structure of a large message, found by one streaming pass over the file.

A message bigger than one Graph request (about 4 MB base64) cannot go as raw MIME: Graph
documents MIME only as the body of one request
(https://learn.microsoft.com/graph/outlook-send-mime-message), and upload sessions only for
attachments (https://learn.microsoft.com/graph/outlook-large-attachments).  The large path sends a *skeleton*: the message with its biggest
attachments cut out (still a valid MIME message, every header intact), created as a draft;
the cut-out attachments then travel separately (upload sessions, or one POST each when small),
decoded straight from their byte ranges in the spool file.  This module finds those byte
ranges without holding the body in memory, and builds the skeleton as a list of file ranges.
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
from email.message import Message
from typing import Iterator, Optional

import attrs

from gateway.delivery.graph.body import Concat, FileRange, Literal, base64_length

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
MAX_PART_HEADER = 64 * 1024
MAX_DEPTH = 20


@attrs.frozen
class Part:
    """
    One MIME entity.  ``span`` is where it sits in the file including its opening boundary
    line (``span_start``) up to the next boundary line, so removing the span keeps the parent
    multipart well formed.  ``body_start``/``body_end`` delimit the encoded content.
    """

    content_type: str
    encoding: str
    disposition: Optional[str]
    filename: Optional[str]
    content_id: Optional[str]
    body_start: int
    body_end: int
    span_start: int
    span_end: int
    children: tuple["Part", ...] = ()
    depth: int = 0
    opening: bytes = b""

    @property
    def is_multipart(self) -> bool:
        return self.content_type.startswith("multipart/")

    @property
    def is_attachment(self) -> bool:
        """Something a reader sees as a file rather than as the message text."""
        if self.is_multipart or self.depth == 0:
            return False
        if self.disposition == "attachment" or self.filename:
            return True
        return not self.content_type.startswith("text/")

    @property
    def is_inline(self) -> bool:
        return self.disposition == "inline" or (self.disposition is None and self.content_id is not None)

    def walk(self) -> Iterator[Part]:
        yield self
        for c in self.children:
            yield from c.walk()


class _Lines:
    """Lines of a file with their offsets, read in blocks (blocking: used in a thread)."""

    def __init__(self, f, start: int) -> None:
        self._f = f
        self._f.seek(start)
        self.offset = start
        self._pending: Optional[tuple[int, bytes]] = None

    def next(self) -> Optional[tuple[int, bytes]]:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        start = self.offset
        line = self._f.readline(1024 * 1024)
        if not line:
            return None
        self.offset += len(line)
        return start, line

    def push_back(self, item: tuple[int, bytes]) -> None:
        self._pending = item


#: A line of the file and the offset it starts at.
_Line = tuple[int, bytes]


def scan_structure(path: str, size: int) -> Part:
    """Parse the entity tree of the message file at ``path`` (blocking: call it in a thread)."""
    with open(path, "rb") as f:
        lines = _Lines(f, 0)
        part, _ = _parse_entity(lines, 0, 0, (), size, 0)
        return part


def _parse_entity(lines: _Lines, span_start: int, header_start: int, boundaries: tuple[bytes, ...], size: int,
                  depth: int) -> tuple[Part, Optional[_Line]]:
    """Parse headers and body of one entity; returns (Part, terminating boundary line or None)."""
    headers, body_start = _read_headers(lines, header_start, boundaries)
    about = _EntityHeaders.of(headers)
    boundary = headers.get_boundary() if about.content_type.startswith("multipart/") and depth < MAX_DEPTH else None
    if boundary:
        children, terminator = _parse_multipart_body(lines, boundary.encode("utf-8", "replace"), boundaries, size, depth)
        end = terminator[0] if terminator else size
        body_end = _strip_crlf_before(lines, end, body_start)
    else:
        # A leaf: its body runs to the next boundary line of any enclosing multipart.
        children, terminator = [], _skip_to_boundary(lines, boundaries)
        end = terminator[0] if terminator else size
        body_end = _strip_crlf_before(lines, end, body_start) if terminator else end
    return Part(about.content_type, about.encoding, about.disposition, about.filename, about.content_id,
                body_start, body_end, span_start, end, tuple(children), depth), terminator


def _read_headers(lines: _Lines, header_start: int, boundaries: tuple[bytes, ...]) -> tuple[Message, int]:
    """
    An entity's header section (at most MAX_PART_HEADER bytes of it are kept) and the offset
    of its body: after the blank line, or at a boundary line that came first.
    """
    header_lines = []
    total = 0
    body_start = header_start
    while True:
        item = lines.next()
        if item is None:
            body_start = lines.offset
            break
        off, line = item
        if line in (b"\r\n", b"\n"):
            body_start = off + len(line)
            break
        if boundaries and _boundary_kind(line, boundaries):
            # A part with no blank line after its headers: headers end at the boundary.
            lines.push_back(item)
            body_start = off
            break
        header_lines.append(line)
        total += len(line)
        if total > MAX_PART_HEADER:
            break
    return _HEADER_PARSER.parsebytes(b"".join(header_lines) + b"\r\n"), body_start


@attrs.frozen
class _EntityHeaders:
    """What the large path needs from an entity's header fields (decoded, normalised)."""

    content_type: str
    encoding: str
    disposition: Optional[str]
    filename: Optional[str]
    content_id: Optional[str]

    @classmethod
    def of(cls, headers: Message) -> _EntityHeaders:
        content_id = headers.get("Content-ID")
        return cls(
            content_type=(headers.get_content_type() or "text/plain").lower(),
            encoding=str(headers.get("Content-Transfer-Encoding", "7bit")).strip().lower(),
            disposition=headers.get_content_disposition(),
            filename=_filename(headers),
            content_id=str(content_id).strip().strip("<>") if content_id else None,
        )


def _filename(headers: Message) -> Optional[str]:
    """The attachment's file name: Content-Disposition's, else Content-Type's ``name``, decoded."""
    filename = headers.get_filename() or headers.get_param("name")
    if isinstance(filename, tuple):
        filename = email.utils.collapse_rfc2231_value(filename)
    return str(email.header.make_header(email.header.decode_header(filename))) if filename else None


def _parse_multipart_body(lines: _Lines, own: bytes, boundaries: tuple[bytes, ...], size: int,
                          depth: int) -> tuple[list[Part], Optional[_Line]]:
    """
    The parts of a multipart whose boundary is ``own``, and the boundary line of an enclosing
    multipart that ended it (None when it ended with its own closing line or the file).
    """
    inner = boundaries + (own,)
    children: list[Part] = []
    terminator: Optional[_Line] = None
    # The preamble runs up to the first boundary line.
    found = _next_boundary(lines, inner)
    if found is not None:
        item, (which, closing) = found
        if which != own:
            terminator = item
        elif not closing:  # a closing boundary straight away means no parts
            children, terminator = _parse_parts(lines, item, own, inner, size, depth)
    if terminator is None:
        # Epilogue: skip to the enclosing boundary (or the end of the file).
        terminator = _skip_to_boundary(lines, boundaries)
    return children, terminator


def _parse_parts(lines: _Lines, delimiter: _Line, own: bytes, inner: tuple[bytes, ...], size: int,
                 depth: int) -> tuple[list[Part], Optional[_Line]]:
    """
    The parts that follow ``delimiter``, each opened by a delimiter line of ``own``, up to its
    closing line (returns None) or, when that is missing, an enclosing boundary (returned).
    """
    children: list[Part] = []
    while True:
        start = delimiter[0]
        child, end_item = _parse_entity(lines, start, start + len(delimiter[1]), inner, size, depth + 1)
        children.append(attrs.evolve(child, opening=delimiter[1]))
        if end_item is None:
            return children, None
        end_kind = _boundary_kind(end_item[1], inner)
        if end_kind is None or end_kind[0] != own:
            return children, end_item  # an outer boundary: our closing one was missing
        if end_kind[1]:
            return children, None
        delimiter = end_item


def _next_boundary(lines: _Lines, boundaries: tuple[bytes, ...]) -> Optional[tuple[_Line, tuple[bytes, bool]]]:
    """The next delimiter line of one of ``boundaries`` and what it is; None at the end of the file."""
    while True:
        item = lines.next()
        if item is None:
            return None
        kind = _boundary_kind(item[1], boundaries)
        if kind is not None:
            return item, kind


def _skip_to_boundary(lines: _Lines, boundaries: tuple[bytes, ...]) -> Optional[_Line]:
    """Skip to the next delimiter line of one of ``boundaries`` (returned); None at the end of the file."""
    if not boundaries:
        while lines.next() is not None:
            pass
        return None
    found = _next_boundary(lines, boundaries)
    return found[0] if found is not None else None


def _strip_crlf_before(lines: _Lines, end: int, start: int) -> int:
    """The CRLF before a boundary line belongs to the boundary (RFC 2046 §5.1.1)."""
    return max(start, end - 2)


def _boundary_kind(line: bytes, boundaries: tuple[bytes, ...]) -> Optional[tuple[bytes, bool]]:
    """``(boundary, is_closing)`` if ``line`` is a delimiter of one of ``boundaries``."""
    if not line.startswith(b"--"):
        return None
    text = line.rstrip(b"\r\n").rstrip(b" \t")
    for b in reversed(boundaries):
        if text == b"--" + b:
            return b, False
        if text == b"--" + b + b"--":
            return b, True
    return None


@attrs.frozen
class Extraction:
    """A skeleton (with the given header section) and the attachments cut out of it."""

    skeleton: Concat
    attachments: tuple[Part, ...]


def plan_extraction(root: Part, path: str, header: bytes, body_offset: int, size: int, max_request: int) -> Optional[Extraction]:
    """
    Cut attachments out, biggest first, until the skeleton's base64 fits ``max_request``.
    ``header`` replaces the file's header section (it may have been rewritten for recipients).
    Returns ``None`` when even without every attachment the message is too big.
    """
    skeleton_size = len(header) + 2 + (size - body_offset)
    candidates = sorted((p for p in root.walk() if p.is_attachment), key=lambda p: p.span_end - p.span_start, reverse=True)
    chosen: list[Part] = []
    for part in candidates:
        if base64_length(skeleton_size) <= max_request:
            break
        if any(_contains(c, part) or _contains(part, c) for c in chosen):
            continue
        chosen.append(part)
        skeleton_size -= part.span_end - part.span_start
    if base64_length(skeleton_size) > max_request:
        return None
    chosen.sort(key=lambda p: p.span_start)
    placeholders = _placeholders(root, chosen)
    pieces: list = [Literal(header + b"\r\n")]
    pos = body_offset
    for part in chosen:
        if part.span_start > pos:
            pieces.append(FileRange(path, pos, part.span_start))
        if part.span_start in placeholders:
            pieces.append(Literal(placeholders[part.span_start]))
        pos = part.span_end
    if pos < size:
        pieces.append(FileRange(path, pos, size))
    return Extraction(Concat(tuple(pieces)), tuple(chosen))


def _placeholders(root: Part, chosen: list[Part]) -> dict[int, bytes]:
    """
    A multipart whose every part was cut out would be left empty, which MIME does not allow:
    its first cut part is replaced by an empty text part (opened by the same boundary line).
    """
    chosen_starts = {p.span_start for p in chosen}
    out: dict[int, bytes] = {}
    for parent in root.walk():
        if parent.children and all(c.span_start in chosen_starts for c in parent.children):
            first = parent.children[0]
            out[first.span_start] = b"\r\n".join([
                b"--" + _boundary_of(first), b"Content-Type: text/plain; charset=us-ascii", b"", b"", b"",
            ])
    return out


def _boundary_of(part: Part) -> bytes:
    return part.opening.rstrip(b"\r\n")[2:]


def _contains(outer: Part, inner: Part) -> bool:
    return outer.span_start <= inner.span_start and inner.span_end <= outer.span_end


__all__ = ["Part", "scan_structure", "plan_extraction", "Extraction"]
