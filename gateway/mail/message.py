"""
A message's header section judged once: split into fields, checked for everything two
reasonable parsers could read differently, and its address fields parsed.

L{parse_header_section} is what the SMTP intake runs at end of data (off the reactor thread),
what sendmail runs on its input, and what the policies, the relay guard and the Graph deliverer
read from.  A section it returns is unambiguous; anything else raises L{MailRefusal} with the
reason (``550 5.6.0``) or the limit (``552 5.3.4``).

Refused, with the rule each enforces:

- an mbox ``From `` line where a header field could be (the ``email`` package moves it out of
  the header section, intake and Exchange may not);
- white space between a field name and its colon (``From : ceo@...``), on any field: the
  ``email`` package ends the header section there, other readers take it as the field;
- a line that is neither a field nor a continuation inside the section, and NUL bytes;
- a message whose first line starts with white space (intake reads no header section, the
  ``email`` package drops that line and reads the fields after it);
- more than one From, Sender, Reply-To, To, Cc, Bcc, Subject (RFC 5322 §3.6 allows one);
- a group, no mailbox, or several mailboxes without a Sender, in From; anything but one
  mailbox in Sender, Resent-From, Resent-Sender;
- every address-field problem of L{gateway.mail.addresses}.
"""

from __future__ import annotations

from typing import Optional

import attrs

from gateway.mail.addresses import AddressList, Mailbox, canonical, parse_address_list
from gateway.mail.errors import LimitExceeded, MalformedHeader
from gateway.mail.fields import (
    FIELD_OPENING,
    Field,
    field_pieces,
    is_continuation,
    is_from_line,
)
from gateway.mail.limits import DEFAULT_LIMITS, MailLimits

#: Fields whose value is an address list and which the gateway reads.
ADDRESS_FIELDS = (
    "from", "sender", "reply-to", "to", "cc", "bcc",
    "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",
)
#: Fields RFC 5322 allows at most once whose duplicates change who a message is from or to.
SINGLE_FIELDS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc", "subject"})
#: Fields that say who sent the message; each is judged against the sender patterns.
IDENTITY_FIELDS = ("from", "sender", "resent-from", "resent-sender")
_ONE_MAILBOX = frozenset({"sender", "resent-sender"})
_ADDRESS_FIELD_SET = frozenset(ADDRESS_FIELDS)
_DISPLAY = {name: "-".join(part.capitalize() for part in name.split("-")) for name in ADDRESS_FIELDS}


def display_name_of(lname: str) -> str:
    """``reply-to`` → ``Reply-To`` (for replies and logs)."""
    return _DISPLAY.get(lname) or "-".join(part.capitalize() for part in lname.split("-"))


@attrs.frozen
class MessageHeader:
    """
    A judged header section: ``raw`` the section's field lines (CRLF-terminated, no empty
    separator line), ``fields`` split, ``addresses`` every present address field parsed
    (lower-cased name → L{AddressList}; a field that occurs more than once, only the Resent-*
    ones may, contributes all its entries).
    """

    raw: bytes
    fields: tuple[Field, ...]
    addresses: dict = attrs.field(factory=dict, eq=False)

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [f.text for f in self.fields if f.lname == lname]

    def get(self, name: str) -> Optional[str]:
        values = self.get_all(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        lname = name.lower()
        return any(f.lname == lname for f in self.fields)

    def address_list(self, name: str) -> AddressList:
        """The parsed entries of address field ``name`` (empty when absent)."""
        return self.addresses.get(name.lower(), AddressList())

    def mailboxes(self, name: str) -> tuple[Mailbox, ...]:
        return self.address_list(name).mailboxes

    def identity_mailboxes(self) -> list[tuple[str, Mailbox]]:
        """``(Field-Name, mailbox)`` for every address that says who sent the message."""
        return [(display_name_of(n), m) for n in IDENTITY_FIELDS for m in self.mailboxes(n)]

    def header_sender(self) -> Optional[Mailbox]:
        """
        Who the message is from as a reader sees it: the From mailbox, or the Sender when From
        lists several (RFC 5322 §3.6.2 then requires a Sender); None without a From.
        """
        froms = self.mailboxes("from")
        if len(froms) == 1:
            return froms[0]
        senders = self.mailboxes("sender")
        # Several From addresses come with a Sender (the judge refuses them otherwise).
        return senders[0] if senders else None


def _header_lines(section: bytes) -> bytes:
    """The field lines of ``section`` (a whole header section with or without its empty line)."""
    if section.startswith(b"\r\n"):
        return b""
    end = section.find(b"\r\n\r\n")
    if end >= 0:
        return section[:end + 2]
    return section if section.endswith(b"\r\n") or not section else section + b"\r\n"


def parse_header_section(section: bytes, limits: MailLimits = DEFAULT_LIMITS,
                         first_body_line: bytes = b"") -> MessageHeader:
    """
    Judge ``section`` (the header fields, optionally followed by the empty line and more) and
    parse its address fields.  ``first_body_line`` is the line that ended the section when it
    was not an empty line (intake knows it): an mbox ``From `` line there is refused too.
    Raises L{MailRefusal}.
    """
    lines = _header_lines(section)
    if b"\x00" in lines:
        raise MalformedHeader("NUL byte in the header section")
    if is_from_line(first_body_line):
        raise MalformedHeader('an mbox "From " line in the header section')
    if is_continuation(first_body_line):
        raise MalformedHeader("the message starts with an indented line (some readers take the "
                              "fields after it as the header section, others as the body)")
    pieces = field_pieces(lines, limits.max_fields)
    if pieces and len(pieces) > limits.max_fields:
        raise LimitExceeded(f"more than {limits.max_fields} header fields")
    fields, values = _judge_fields(pieces)
    addresses: dict[str, AddressList] = {}
    for lname, texts in values.items():
        what = display_name_of(lname)
        if len(texts) == 1:
            # The usual case: the field's own list (parse_address_list enforces max_addresses).
            addresses[lname] = parse_address_list(texts[0], what, limits)
            continue
        items: list = []
        for text in texts:
            items.extend(parse_address_list(text, what, limits).items)
        if len(items) > limits.max_addresses:
            raise LimitExceeded(f"more than {limits.max_addresses} addresses in the {what} header")
        addresses[lname] = AddressList(tuple(items))
    _check_identity(addresses)
    return MessageHeader(lines, fields, addresses)


def _judge_fields(pieces: list[bytes]) -> tuple[tuple[Field, ...], dict[str, list[str]]]:
    """
    The fields (as L{split_fields} makes them), each judged as it is built: a line that is not
    a field, white space before a colon, a duplicate of a field allowed once.  Returns them and
    the unfolded text of every address field (lower-cased name → values in order).
    """
    fields: list[Field] = []
    seen: set[str] = set()
    values: dict[str, list[str]] = {}
    match = FIELD_OPENING.match
    for piece in pieces:
        m = match(piece)
        if m is None:
            if is_from_line(piece + b"\r\n"):
                raise MalformedHeader('an mbox "From " line in the header section')
            raise MalformedHeader("a line in the header section that is not a header field")
        name = m.group(1)
        lname = name.decode("ascii").lower()
        if m.end(2) > m.start(2):
            raise MalformedHeader(
                f"white space before the colon in the {display_name_of(lname)} header field "
                "(obsolete syntax that mail parsers read differently)")
        if lname in SINGLE_FIELDS and lname in seen:
            raise MalformedHeader(f"more than one {display_name_of(lname)} header field")
        seen.add(lname)
        fields.append(Field(name, piece + b"\r\n"))
        if lname in _ADDRESS_FIELD_SET:
            # The value after the colon, unfolded (Field.value without a second search).
            values.setdefault(lname, []).append(piece[m.end():].replace(b"\r\n", b"").decode("utf-8", "replace"))
    return tuple(fields), values


def _check_identity(addresses: dict) -> None:
    for lname in IDENTITY_FIELDS:
        found = addresses.get(lname)
        if found is None:
            continue
        what = display_name_of(lname)
        if found.groups:
            raise MalformedHeader(f"a group in the {what} header")
        if not found.mailboxes:
            raise MalformedHeader(f"no address in the {what} header")
        if lname in _ONE_MAILBOX and len(found.mailboxes) != 1:
            raise MalformedHeader(f"more than one address in the {what} header")
    froms = addresses.get("from")
    if froms is not None and len(froms.mailboxes) > 1 and "sender" not in addresses:
        raise MalformedHeader("several From addresses without a Sender header")


SEND_AS_MODES = ("header-from", "envelope-from")


def choose_sending_mailbox(header: Optional[MessageHeader], envelope_sender: str, send_as: str) -> Optional[str]:
    """
    The canonical mailbox Graph sends through, decided from the judged header and the envelope:
    ``header-from`` (From, or Sender when From lists several; the envelope sender without a
    From), ``envelope-from`` (the reverse-path; the header sender for the null reverse-path), or
    a fixed mailbox.  None when there is nothing to send from.
    """
    if send_as not in SEND_AS_MODES:
        return canonical(send_as) or send_as.strip().lower()
    mailbox = header.header_sender() if header is not None else None
    from_header = mailbox.canonical if mailbox is not None else None
    envelope = canonical(envelope_sender) if envelope_sender.strip() else None
    if send_as == "header-from":
        return from_header or envelope
    return envelope or from_header


__all__ = [
    "MessageHeader", "parse_header_section", "choose_sending_mailbox", "ADDRESS_FIELDS", "IDENTITY_FIELDS",
    "SINGLE_FIELDS", "SEND_AS_MODES", "display_name_of",
]
