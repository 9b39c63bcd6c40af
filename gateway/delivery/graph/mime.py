"""
Reading a spooled message's header section and deciding how Graph must see it.

Graph's MIME mode has no envelope: it delivers to the To/Cc/Bcc headers
(https://learn.microsoft.com/graph/outlook-send-mime-message).
The gateway promises the SMTP envelope instead (ARCHITECTURE invariant 3), so for every
message this module compares the two and picks the cheapest way to make Graph deliver to
exactly the envelope recipients:

=========  ==========================================================  ======================
path       when                                                        Graph permission
=========  ==========================================================  ======================
plain      headers name exactly the envelope recipients: the file      Mail.Send
           goes out byte for byte (one sendMail request)
rewrite    header addresses that are not envelope recipients are       Mail.Send
           removed from To/Cc (they must receive nothing); in
           ``bcc-header`` mode envelope-only recipients go into a
           regenerated ``Bcc:`` header.  Every other header stays
           byte-identical (one sendMail request)
draft      ``hidden_recipients = "draft"`` and there are envelope-     Mail.ReadWrite +
           only recipients: the MIME never names them; the message     Mail.Send
           is created as a draft, they are set as its
           ``bccRecipients`` property, then it is sent (3 requests)
=========  ==========================================================  ======================

Messages too big for one request always take a draft (+ upload sessions), so the large path
needs Mail.ReadWrite too; with it disabled (``large_messages = false``) Mail.Send suffices.

Disclosure of envelope-only recipients (the ``hidden_recipients`` choice).  In the default
``bcc-header`` mode they appear in a ``Bcc:`` header of the MIME Graph receives.  Exchange
parses MIME into the item's recipient table with Bcc as a blind recipient (the page above),
and Exchange has always treated Bcc as an envelope property that is not written into the
copies other recipients get; that Graph's MIME submission does the same is, however, not
documented anywhere.  The default was chosen because it needs only Mail.Send and one
request.  Operators who must not rely on it set ``hidden_recipients = "draft"``: the MIME then
never names hidden recipients, and Graph's documented ``bccRecipients`` property carries them.
Either way a hidden recipient is never put in To or Cc, and an address in To/Cc that is not an
envelope recipient is removed, so it receives nothing (it also disappears from the To/Cc the
others see: Graph cannot show an address without delivering to it).  Removing addresses or
adding Bcc changes the header section, which breaks a DKIM signature covering To/Cc; Exchange
Online signs outgoing mail with the tenant's own key anyway.

Only the header section is ever read into memory (it is capped), never the body.

Every header field and address is read through the gateway's one mail grammar
(L{gateway.mail}), the reading the intake judged.  The mailbox is not chosen here for entries
that carry the intake's decision (L{SpoolEntry.sending_mailbox}): the deliverer executes it.
L{choose_mailbox} remains for entries written before that decision was recorded, and judges
their header section with the same grammar (an ambiguous one is a permanent format error).
An address field the grammar refuses names nobody the gateway can vouch for: a rewrite drops it.
"""

from __future__ import annotations

import email.header
import email.utils
import re
from typing import Iterable, Optional

import attrs

from gateway.mail.addresses import Group, canonical, parse_address_list
from gateway.mail.errors import MailRefusal
from gateway.mail.fields import split_fields as split_mail_fields
from gateway.mail.message import choose_sending_mailbox, parse_header_section

#: Exchange Online's header-section limit is 256 KB; allow generous slack, then refuse.
MAX_HEADER_SECTION = 1024 * 1024


class MessageFormatError(Exception):
    """The spooled message cannot be sent as it is (permanent: retrying changes nothing)."""


@attrs.frozen
class HeaderField:
    """One header field exactly as in the file: ``raw`` includes folding and the final CRLF."""

    name: bytes
    raw: bytes

    @property
    def lname(self) -> bytes:
        return self.name.lower()

    @property
    def value(self) -> str:
        """The unfolded value as text (UTF-8, undecodable bytes replaced)."""
        value = self.raw.split(b":", 1)[1] if b":" in self.raw else b""
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
        return value.decode("utf-8", "replace").strip()


@attrs.frozen
class HeaderSection:
    """The message's header fields and where its body starts in the file."""

    fields: tuple[HeaderField, ...]
    body_offset: int
    size: int

    def get_all(self, name: str) -> list[str]:
        lname = name.lower().encode("ascii")
        return [f.value for f in self.fields if f.lname == lname]

    def get(self, name: str) -> Optional[str]:
        values = self.get_all(name)
        return values[0] if values else None

    def addresses(self, name: str) -> list[str]:
        """The addresses in every ``name`` field, in order (display names dropped)."""
        out: list[str] = []
        for value in self.get_all(name):
            for item in split_address_list(value):
                out.extend(m.address for m in (item.members if item.group is not None else (item,)) if m.address)
        return out

    def judged(self):
        """The section judged by the mail grammar (raises L{MailRefusal})."""
        return parse_header_section(self.raw)

    @property
    def raw(self) -> bytes:
        return b"".join(f.raw for f in self.fields)


def read_header_section(path: str, limit: int = MAX_HEADER_SECTION) -> HeaderSection:
    """Read and split the header section of the message file (blocking: call it in a thread)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        data = f.read(limit + 4)
    if data.startswith(b"\r\n"):
        return HeaderSection((), 2, size)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if size > limit:
            raise MessageFormatError(f"header section longer than {limit} bytes")
        header, body_offset = data, size
        if not header.endswith(b"\r\n"):
            header += b"\r\n"
    else:
        header, body_offset = data[:end + 2], end + 4
    return HeaderSection(tuple(split_fields(header)), body_offset, size)


def split_fields(header: bytes) -> list[HeaderField]:
    """Split a CRLF header section into fields (L{gateway.mail.fields} rules)."""
    if header and not header.endswith(b"\r\n"):
        header += b"\r\n"
    return [HeaderField(f.name, f.raw) for f in split_mail_fields(header)]


def normalise(address: str) -> str:
    """Comparison form of an address: its canonical spelling (L{gateway.mail.canonical})."""
    text = address.strip().strip("<>").strip()
    return canonical(text) or text.casefold()


# -- address lists --------------------------------------------------------------------------

@attrs.frozen
class AddressItem:
    """One entry of an address list, rendered from the grammar's reading (``raw``)."""

    raw: str
    address: str = ""
    group: Optional[str] = None
    members: tuple["AddressItem", ...] = ()


_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+\Z")


def _render_phrase(name: str) -> str:
    if _PHRASE.match(name):
        return name
    if name.isascii():
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return email.header.Header(name, "utf-8").encode()


def _render_mailbox(mailbox) -> AddressItem:
    return AddressItem(email.utils.formataddr((mailbox.display_name, mailbox.address)), mailbox.address)


def split_address_list(value: str) -> list[AddressItem]:
    """
    The entries of an address-list value as the mail grammar reads them; a value it refuses
    yields one item without an address (it names nobody the gateway can vouch for).
    """
    try:
        parsed = parse_address_list(value, "address")
    except MailRefusal:
        return [AddressItem(value.strip(), "")]
    items: list[AddressItem] = []
    for item in parsed.items:
        if isinstance(item, Group):
            members = tuple(_render_mailbox(m) for m in item.members)
            items.append(AddressItem(f"{_render_phrase(item.name)}:", group=_render_phrase(item.name), members=members))
        else:
            items.append(_render_mailbox(item))
    return items


def filter_address_list(value: str, keep: set[str]) -> tuple[list[str], bool]:
    """
    The entries of an address list whose address (normalised) is in ``keep``, each rendered
    from the grammar's reading, and whether anything was removed.  An empty group such as
    ``undisclosed-recipients:;`` names nobody and is kept.
    """
    out: list[str] = []
    removed = False
    for item in split_address_list(value):
        if item.group is not None:
            kept = [m.raw for m in item.members if m.address and normalise(m.address) in keep]
            removed |= len(kept) != len(item.members)
            if kept:
                out.append(f"{item.group}: {', '.join(kept)};")
            elif not item.members:
                out.append(f"{item.group}:;")
            continue
        if item.address and normalise(item.address) in keep:
            out.append(item.raw)
        else:
            removed = True
    return out, removed


def fold_address_field(name: str, values: Iterable[str]) -> bytes:
    """``Name: a, b, c`` folded between entries before 78 columns, CRLF-terminated."""
    lines: list[str] = []
    line = f"{name}:"
    values = list(values)
    for i, v in enumerate(values):
        piece = f" {v}" + ("," if i < len(values) - 1 else "")
        if len(line) + len(piece) > 78 and line != f"{name}:":
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# -- the plan -------------------------------------------------------------------------------

@attrs.frozen
class RecipientPlan:
    """
    How Graph will reach exactly the envelope recipients.

    ``kind`` is ``plain``, ``rewrite`` or ``draft``; ``header`` is the header section to send
    (the original bytes for ``plain``); ``hidden`` are the envelope recipients not visible in
    To/Cc (Bcc header in ``bcc-header`` mode, draft property in ``draft`` mode); ``removed`` is
    whether header addresses that are not envelope recipients were taken out.
    """

    kind: str
    header: bytes
    hidden: tuple[str, ...]
    removed: bool

    @property
    def permission(self) -> str:
        return "Mail.ReadWrite + Mail.Send" if self.kind == "draft" else "Mail.Send"


def plan_recipients(section: HeaderSection, recipients: Iterable[str], hidden_mode: str = "bcc-header") -> RecipientPlan:
    """Compare headers with the envelope and choose the cheapest exact path (see module doc)."""
    envelope = list(recipients)
    wanted = {normalise(r) for r in envelope}
    visible = {normalise(a) for a in section.addresses("to") + section.addresses("cc")}
    header_bcc = [normalise(a) for a in section.addresses("bcc")]
    hidden = tuple(r for r in envelope if normalise(r) not in visible)
    fields, removed = _fields_for_envelope(section, wanted)
    if hidden_mode == "draft":
        return _draft_plan(section, fields, hidden, header_bcc, removed)
    return _bcc_header_plan(section, fields, hidden, header_bcc, removed)


def _fields_for_envelope(section: HeaderSection, wanted: set[str]) -> tuple[list[bytes], bool]:
    """
    The header fields with Bcc left out and To/Cc reduced to envelope recipients (a field
    left empty goes); and whether any To/Cc address was taken out.  Untouched fields keep
    their original bytes.
    """
    fields: list[bytes] = []
    removed = False
    for f in section.fields:
        if f.lname == b"bcc":
            continue
        if f.lname not in (b"to", b"cc"):
            fields.append(f.raw)
            continue
        kept, was_removed = filter_address_list(f.value, wanted)
        removed |= was_removed
        if not was_removed:
            fields.append(f.raw)
        elif kept:
            fields.append(fold_address_field(f.name.decode("ascii", "replace"), kept))
    return fields, removed


def _draft_plan(section: HeaderSection, fields: list[bytes], hidden: tuple[str, ...], header_bcc: list[str],
                removed: bool) -> RecipientPlan:
    """``draft`` mode: hidden recipients become the draft's bccRecipients, never a header."""
    if not hidden and not header_bcc and not removed:
        return RecipientPlan("plain", section.raw, (), False)
    kind = "draft" if hidden else "rewrite"
    return RecipientPlan(kind, b"".join(fields), hidden, removed)


def _bcc_header_plan(section: HeaderSection, fields: list[bytes], hidden: tuple[str, ...], header_bcc: list[str],
                     removed: bool) -> RecipientPlan:
    """``bcc-header`` mode: hidden recipients travel in a Bcc header that says exactly them."""
    bcc_matches = set(header_bcc) == {normalise(r) for r in hidden} and len(header_bcc) == len(set(header_bcc))
    if not removed and bcc_matches:
        return RecipientPlan("plain", section.raw, hidden, False)
    if hidden:
        fields.append(fold_address_field("Bcc", hidden))
    return RecipientPlan("rewrite", b"".join(fields), hidden, removed)


def choose_mailbox(section: HeaderSection, envelope_sender: str, send_as: str) -> str:
    """
    The mailbox Graph sends through (``/users/{mailbox}/sendMail``) for an entry written
    before the intake recorded its decision; entries with ``sending_mailbox`` never come here.

    ``header-from`` (the default) uses the From address (or Sender when From lists several):
    Exchange then needs no Send As right, because From and mailbox agree.  ``envelope-from``
    uses the reverse-path.  Either falls back to the other when empty.  A fixed mailbox sends
    everything through one mailbox; Exchange then needs Send As (or Send on Behalf) rights for
    every From address that is not that mailbox, else Graph answers 403 ErrorSendAsDenied.
    The header is judged by the mail grammar exactly as at intake
    (L{gateway.mail.message.choose_sending_mailbox}).  Raises L{MessageFormatError} when the
    section is refused or there is nothing to send from.
    """
    if send_as not in ("header-from", "envelope-from"):
        return send_as
    try:
        judged = section.judged()
    except MailRefusal as e:
        raise MessageFormatError(f"header section refused: {e.text}") from None
    choice = choose_sending_mailbox(judged, envelope_sender, send_as)
    if not choice:
        raise MessageFormatError("no sending mailbox: the message has no From address and a null reverse-path")
    return choice


__all__ = [
    "MessageFormatError", "HeaderField", "HeaderSection", "read_header_section", "split_fields",
    "normalise", "split_address_list", "filter_address_list", "fold_address_field",
    "RecipientPlan", "plan_recipients", "choose_mailbox", "MAX_HEADER_SECTION",
]
