"""
graphsmtp-sendmail's reading of standard input: lines, the header section, the envelope.

Standard input is turned into CRLF lines as it streams (L{LineReader}); only the header
section is held in memory (bounded by L{MAX_HEADER_BYTES}), the body is passed on as an
iterator to the spool or the daemon.  What the SMTP intake refuses is refused here too, with
EX_DATAERR: input the one mail grammar (L{gateway.mail}) refuses, and — as at the end of SMTP
DATA (550 5.6.0) — a NUL octet or a line longer than L{MESSAGE_LINE_LIMIT} octets
(L{gateway.mail.lines}).  The check runs on every line as it is read, so a refused message
leaves nothing behind: the caller discards its unfinished spool file.
"""

from __future__ import annotations

import itertools
from typing import BinaryIO, Iterable, Iterator, Optional

import attrs

from gateway.cli.sendmail_args import Options, SendmailError
from gateway.cli.sysexits import EX_DATAERR, EX_USAGE
from gateway.mail.addresses import canonical, parse_addr_spec
from gateway.mail.errors import MailRefusal
from gateway.mail.fields import split_fields
from gateway.mail.lines import MESSAGE_LINE_LIMIT, LineRules
from gateway.mail.message import MessageHeader, parse_header_section
from gateway.smtp.headers import HeaderCollector

MAX_HEADER_BYTES = 1024 * 1024
_READ_SIZE = 1 << 20


class LineReader:
    """
    Standard input as CRLF lines: LF, CRLF and lone CR all become CRLF; unless ``ignore_dots``
    a line holding only "." ends the message (classic sendmail).  Over-long lines are passed
    on in pieces so memory stays bounded.
    """

    def __init__(self, stream: BinaryIO, ignore_dots: bool) -> None:
        self._stream = stream
        self._ignore_dots = ignore_dots
        self._carry = b""
        self._mid_line = False
        self.ended_by_dot = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            piece = self._stream.readline(_READ_SIZE)
            if not piece:
                if self._carry:
                    yield self._carry.replace(b"\r", b"\r\n")
                    self._carry = b""
                return
            piece = self._carry + piece
            self._carry = b""
            if piece.endswith(b"\n"):
                content = self._line_content(piece)
                if content is None:
                    return
                yield content
            else:
                yield self._part_of_line(piece)

    def _line_content(self, piece: bytes) -> Optional[bytes]:
        """A whole line as CRLF content; None for the lone dot that ends the message."""
        content = piece[:-1]
        if content.endswith(b"\r"):
            content = content[:-1]
        if content == b"." and not self._ignore_dots and not self._mid_line:
            self.ended_by_dot = True
            return None
        self._mid_line = False
        return content.replace(b"\r", b"\r\n") + b"\r\n"

    def _part_of_line(self, piece: bytes) -> bytes:
        """A piece of a long line; a CR at its end waits for the next piece (it may start CRLF)."""
        if piece.endswith(b"\r"):
            piece, self._carry = piece[:-1], b"\r"
        self._mid_line = True
        return piece.replace(b"\r", b"\r\n")


class LineRule:
    """
    RFC 5322's line rules (L{gateway.mail.lines.LineRules}) on the CRLF content read from
    standard input, as the command's refusal: no NUL octet, no line longer than
    L{MESSAGE_LINE_LIMIT} — an unfinished line counts too, so one endless line is refused as
    soon as it is too long.
    """

    def __init__(self) -> None:
        self._rules = LineRules()

    def check(self, piece: bytes) -> None:
        self._rules.feed(piece)
        self._raise_if_broken()

    def finish(self) -> None:
        self._rules.finish()
        self._raise_if_broken()

    def _raise_if_broken(self) -> None:
        if self._rules.nul:
            raise SendmailError(EX_DATAERR, "message refused: it contains a NUL octet, which RFC 5322 does not allow")
        if self._rules.long_line:
            raise SendmailError(EX_DATAERR, f"message refused: a line is longer than {MESSAGE_LINE_LIMIT} octets "
                                            "(RFC 5322 section 2.1.1)")


def checked_lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``pieces``, each passed on once L{LineRule} has found nothing wrong with it."""
    rule = LineRule()
    for piece in pieces:
        rule.check(piece)
        yield piece
    rule.finish()


@attrs.define
class Message:
    """The message as read from standard input: envelope, header fields, and the body to come."""

    sender: str
    recipients: list[str]
    fields: list[tuple[bytes, bytes]]  # (lower-case name, raw field bytes) in order
    body_start: bytes
    rest: Iterator[bytes]

    @property
    def names(self) -> set[bytes]:
        return {name for name, _ in self.fields}


@attrs.frozen
class _HeaderSection:
    lines: bytes  # the field lines, each ending in CRLF
    body_start: bytes  # what followed the separator in the same read
    stopped_at: bytes  # the line that ended the section when it was not the empty line


def read_message(opts: Options, stdin: BinaryIO, hostname: str, user: str) -> Message:
    """Envelope from the options (and, with -t, the headers), the header section, the body to come."""
    sender = "" if opts.sender in ("<>", "") else check_address(opts.sender or user, hostname, "-f")
    recipients = [check_address(r, hostname, "the argument list") for r in opts.recipients]
    lines = checked_lines(LineReader(stdin, opts.ignore_dots))
    header = _read_header_section(_without_mbox_separator(lines))
    judged = _judge(header)
    fields = [(f.name.lower(), f.raw) for f in split_fields(header.lines)]
    if opts.extract:
        recipients += _header_recipients(judged, hostname)
        fields = [(name, raw) for name, raw in fields if name != b"bcc"]
    recipients = _unique(recipients)
    if not recipients:
        raise SendmailError(EX_USAGE, "no recipients: name them as arguments or use -t")
    return Message(sender, recipients, fields, header.body_start, lines)


def _without_mbox_separator(lines: Iterator[bytes]) -> Iterator[bytes]:
    """``lines`` without a leading mbox ``From `` separator line, as mail(1) may pass on."""
    first = next(lines, None)
    if first is None:
        return lines
    return lines if first.startswith(b"From ") else itertools.chain((first,), lines)


def _read_header_section(lines: Iterator[bytes]) -> _HeaderSection:
    """Reads up to the end of the header section; the rest stays in ``lines``."""
    collector = HeaderCollector(limit=MAX_HEADER_BYTES)
    for line in lines:
        result = collector.feed(line)
        if result is not None:
            return _HeaderSection(*result, collector.stopped_at)
        if collector.overflowed:
            raise SendmailError(EX_DATAERR, f"header section larger than {MAX_HEADER_BYTES} bytes")
    # The input ended inside the header section.  Its last line may lack a newline (printf
    # without \n): end that line, or the collector would drop it as unfinished.
    header_lines, body_start = collector.feed(b"\r\n") or collector.finish_at_end()
    return _HeaderSection(header_lines, body_start, collector.stopped_at)


def _judge(header: _HeaderSection) -> MessageHeader:
    """
    The one mail grammar judges the input as the SMTP intake would (issue 8): what it refuses
    is a data error here, and -t reads recipients from its reading.
    """
    try:
        return parse_header_section(header.lines, first_body_line=header.stopped_at)
    except MailRefusal as e:
        raise SendmailError(EX_DATAERR, f"message refused: {e.text}") from None


def _header_recipients(judged: MessageHeader, hostname: str) -> list[str]:
    """-t: the mailboxes of the To, Cc and Bcc fields."""
    return [check_address(mailbox.address, hostname, "the To/Cc/Bcc headers")
            for name in ("to", "cc", "bcc") for mailbox in judged.mailboxes(name)]


def check_address(address: str, hostname: str, where: str) -> str:
    """An envelope address from the command line or a header; a bare local name gets ``@hostname``."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address or len(address) > 254:
        raise SendmailError(EX_DATAERR, f"invalid address {address!r} in {where}")
    if "@" not in address:
        if any(c.isspace() or ord(c) < 32 or c in "<>()," for c in address):
            raise SendmailError(EX_DATAERR, f"invalid address {address!r} in {where}")
        address = f"{address}@{hostname}"  # a local name, as sendmail qualifies it
    try:
        return parse_addr_spec(address).address
    except MailRefusal:
        raise SendmailError(EX_DATAERR, f"invalid address {address!r} in {where}") from None


def _unique(addresses: list[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for a in addresses:
        key = canonical(a) or a.lower()
        if key not in seen:
            seen.add(key)
            result.append(a)
    return result


__all__ = ["LineReader", "LineRule", "MAX_HEADER_BYTES", "Message", "checked_lines", "check_address", "read_message"]
