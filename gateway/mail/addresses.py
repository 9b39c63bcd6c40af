"""
Address and address-list parsing (RFC 5322 §3.4 with the obsolete forms of §4.4 that real
clients send): mailboxes, groups, display names, quoted local parts, comments and RFC 2047
encoded words in display names.

It is a single left-to-right pass: a tokenizer whose regular expressions cannot backtrack
(possessive quantifiers, disjoint character classes), a comment scanner with an explicit depth
counter instead of recursion, and a parser that looks at each token once.  Time and memory are
linear in the field, and L{MailLimits} bounds the number of addresses, encoded words and the
comment depth.

What two reasonable parsers could read differently is refused (L{MalformedHeader}), never
guessed: a source route, a display name or group name that shows an address other than the
mailbox's own, an encoded word that decodes to a line break or sits inside an address, a group
name that is not a phrase (``outsider@evil.example:;``), non-ASCII in an address.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple, Optional, Union

import attrs

from gateway.mail.canonical import canonical_address, quote_local
from gateway.mail.encoded_words import ENCODED_WORD as _ENCODED_WORD
from gateway.mail.encoded_words import decode_encoded_word, decode_unstructured
from gateway.mail.errors import LimitExceeded, MailRefusal, MalformedHeader
from gateway.mail.limits import DEFAULT_LIMITS, MailLimits
from gateway.mail.simple import simple_addr_spec, simple_entries

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255

_WSP = re.compile(r"[ \t]++")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]++")
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]++|\\[^\x00\r\n])*+)"')
_LITERAL = re.compile(r"\[((?:[^\[\]\\\x00-\x08\x0a-\x1f\x7f]++|\\[^\x00\r\n])*+)\]")
_COMMENT_TEXT = re.compile(r"[^()\\]++")
_FLAT_COMMENT = re.compile(r"\((?:[^()\\]++|\\.)*+\)", re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*+)\Z")
# Any letters or digits (an internationalised domain shows a mailbox as well as an ASCII one).
_DOMAIN_AFTER_AT = re.compile(r"[\w-]++(?:\.[\w-]++)++")
_SPECIALS = frozenset("<>@,;:.")
_ADDRESS_STOP = frozenset(" \t<>()[]\\,;:@\"'")


@attrs.frozen
class Mailbox:
    """
    One mailbox: ``display_name`` decoded (encoded words resolved), ``local`` the local part's
    value (unquoted, unescaped), ``domain`` as written.
    """

    display_name: str
    local: str
    domain: str

    @property
    def address(self) -> str:
        """``local@domain`` as it must be written (local part quoted when needed), case kept."""
        return quote_local(self.local) + "@" + self.domain

    @property
    def canonical(self) -> str:
        """The canonical spelling (L{gateway.mail.canonical})."""
        return canonical_address(self.local, self.domain)

    @property
    def key(self) -> str:
        """The canonical spelling without a ``+tag``."""
        local = self.local
        base, plus, _ = local.partition("+")
        if plus and base:
            local = base
        return canonical_address(local, self.domain)


@attrs.frozen
class Group:
    """``name: member, member;`` — members are mailboxes (groups do not nest)."""

    name: str
    members: tuple[Mailbox, ...] = ()


Address = Union[Mailbox, Group]


@attrs.frozen
class AddressList:
    """The entries of one address field, in order."""

    items: tuple[Address, ...] = ()

    @property
    def mailboxes(self) -> tuple[Mailbox, ...]:
        """Every mailbox, group members included, in order."""
        out: list[Mailbox] = []
        for item in self.items:
            if isinstance(item, Group):
                out.extend(item.members)
            else:
                out.append(item)
        return tuple(out)

    @property
    def groups(self) -> tuple[Group, ...]:
        return tuple(item for item in self.items if isinstance(item, Group))


class _Token(NamedTuple):
    kind: str  # atom, quoted, literal, special
    text: str
    space: bool  # white space or a comment came before it


def _end_of_run(pattern: re.Pattern[str], value: str, pos: int) -> int:
    """Where the run of ``pattern``'s characters starting at ``pos`` ends.

    Callers have already seen a character of the run at ``pos``, so the match cannot fail; a
    failure would be a bug in this module, never something a client can cause.
    """
    match = pattern.match(value, pos)
    if match is None:
        raise AssertionError(f"no {pattern.pattern!r} run at offset {pos}")
    return match.end()


def _skip_comment(value: str, pos: int, limits: MailLimits, what: str) -> int:
    """Position after the comment opening at ``pos``; nesting counted, never recursed."""
    flat = _FLAT_COMMENT.match(value, pos)
    if flat is not None:
        return flat.end()
    depth = 0
    n = len(value)
    while pos < n:
        c = value[pos]
        if c == "(":
            depth += 1
            if depth > limits.max_comment_depth:
                raise MalformedHeader(f"{what}: comment nesting deeper than {limits.max_comment_depth}")
            pos += 1
        elif c == ")":
            depth -= 1
            pos += 1
            if depth == 0:
                return pos
        elif c == "\\":
            pos += 2
        else:
            pos = _end_of_run(_COMMENT_TEXT, value, pos)
    raise MalformedHeader(f"{what}: unterminated comment")


def _tokenize(value: str, limits: MailLimits, what: str, comments: Optional[list] = None) -> list[_Token]:
    """The field's words and symbols; with ``comments``, each (outermost) comment's text is appended to it."""
    tokens: list[_Token] = []
    pos, n, space = 0, len(value), False
    while pos < n:
        c = value[pos]
        if c in " \t":
            pos = _end_of_run(_WSP, value, pos)
            space = True
            continue
        if c == "(":
            end = _skip_comment(value, pos, limits, what)
            if comments is not None:
                comments.append(value[pos + 1:end - 1])
            pos = end
            space = True
            continue
        if c == '"':
            m = _QUOTED.match(value, pos)
            if m is None:
                raise MalformedHeader(f"{what}: unterminated or invalid quoted string")
            tokens.append(_Token("quoted", _UNESCAPE.sub(r"\1", m.group(1)), space))
        elif c == "[":
            m = _LITERAL.match(value, pos)
            if m is None:
                raise MalformedHeader(f"{what}: unterminated or invalid domain literal")
            tokens.append(_Token("literal", m.group(0), space))
        elif c in _SPECIALS:
            tokens.append(_Token("special", c, space))
            pos += 1
            space = False
            if len(tokens) > limits.max_tokens:
                raise LimitExceeded(f"more than {limits.max_tokens} words and symbols in the {what} header")
            continue
        else:
            m = _ATOM.match(value, pos)
            if m is None:
                raise MalformedHeader(f"{what}: unexpected character {c!r}")
            tokens.append(_Token("atom", m.group(0), space))
        pos = m.end()
        space = False
        if len(tokens) > limits.max_tokens:
            raise LimitExceeded(f"more than {limits.max_tokens} words and symbols in the {what} header")
    return tokens


def _decode_text(text: str, what: str) -> str:
    """Encoded words anywhere in ``text`` decoded (lenient readers decode them even in quotes)."""
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(lambda m: decode_encoded_word(m.group(1), m.group(2), m.group(3), what), text)


def as_shown(text: str) -> str:
    """
    ``text`` as a reader sees it: compatibility forms folded to what they look like (NFKC: a
    fullwidth ``＠`` or ``．`` is ``@`` or ``.``) and invisible format characters (zero-width
    space, soft hyphen, joiners, direction marks) gone, so an address spelled with them is
    found like the plain one it shows.  ASCII text is shown as it is.
    """
    if text.isascii():
        return text
    folded = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in folded if ch.isascii() or unicodedata.category(ch) != "Cf")


def addresses_in_text(text: str) -> list[str]:
    """Every ``local@domain.tld`` that ``text`` shows to a reader (bounded work per ``@``)."""
    text = as_shown(text)
    found: list[str] = []
    start = 0
    while True:
        at = text.find("@", start)
        if at < 0:
            return found
        start = at + 1
        left = at
        while left > 0 and at - left < MAX_LOCAL_PART and text[left - 1] not in _ADDRESS_STOP:
            left -= 1
        m = _DOMAIN_AFTER_AT.match(text, at + 1, min(len(text), at + 1 + MAX_DOMAIN))
        if left < at and m is not None:
            found.append(text[left:at] + "@" + m.group(0))


class _Parser:
    def __init__(self, tokens: list[_Token], what: str, limits: MailLimits) -> None:
        self.tokens = tokens
        self.n = len(tokens)
        self.i = 0
        self.what = what
        self.limits = limits

    def peek(self) -> Optional[_Token]:
        return self.tokens[self.i] if self.i < self.n else None

    def is_special(self, ch: str) -> bool:
        t = self.peek()
        return t is not None and t.kind == "special" and t.text == ch

    def fail(self, reason: str) -> MalformedHeader:
        return MalformedHeader(f"{self.what}: {reason}")

    def address_list(self) -> AddressList:
        items: list[Address] = []
        while self.i < self.n:
            if self.is_special(","):
                self.i += 1
                continue
            items.append(self.address(allow_group=True))
            if len(items) > self.limits.max_addresses:
                raise LimitExceeded(f"more than {self.limits.max_addresses} addresses in the {self.what} header")
            if self.i < self.n and not self.is_special(","):
                raise self.fail(f"unexpected {self.tokens[self.i].text[:20]!r} after an address")
        return AddressList(tuple(items))

    def phrase(self) -> list[_Token]:
        words: list[_Token] = []
        while True:
            t = self.peek()
            if t is None or not (t.kind in ("atom", "quoted") or (t.kind == "special" and t.text == ".")):
                return words
            words.append(t)
            self.i += 1

    def address(self, allow_group: bool) -> Address:
        words = self.phrase()
        t = self.peek()
        if t is not None and t.kind == "special":
            if t.text == "<":
                self.i += 1
                mailbox = self.addr_spec(in_angle=True)
                if not self.is_special(">"):
                    raise self.fail("missing '>' after an address")
                self.i += 1
                return self.named(words, mailbox)
            if t.text == "@":
                mailbox = self.addr_spec(local_words=words)
                if self.is_special("<"):
                    # ``a@x <a@x>``: an unquoted address as display name, which devices write.
                    # Every reader agrees on it only when both are the same mailbox.
                    self.i += 1
                    inner = self.addr_spec(in_angle=True)
                    if not self.is_special(">"):
                        raise self.fail("missing '>' after an address")
                    self.i += 1
                    if inner.canonical != mailbox.canonical:
                        raise self.fail("the display name shows an address other than the mailbox's own")
                    return attrs.evolve(inner, display_name=mailbox.address)
                return mailbox
            if t.text == ":":
                if not allow_group:
                    raise self.fail("a group inside a group")
                return self.group(words)
        if words:
            raise self.fail("a name without an address")
        raise self.fail(f"unexpected {t.text[:20]!r}" if t is not None else "missing address")

    def group(self, words: list[_Token]) -> Group:
        if not words or any(w.kind == "special" for w in words):
            raise self.fail("a group name must be a plain phrase")
        name = self.display(words)
        if self.shown(name):
            raise self.fail("a group name that shows an address")
        self.i += 1  # the colon
        members: list[Mailbox] = []
        while True:
            if self.is_special(";"):
                self.i += 1
                return Group(name, tuple(members))
            if self.is_special(","):
                self.i += 1
                continue
            if self.peek() is None:
                raise self.fail("a group without its closing ';'")
            member = self.address(allow_group=False)
            members.append(member)  # type: ignore[arg-type]
            if len(members) > self.limits.max_addresses:
                raise LimitExceeded(f"more than {self.limits.max_addresses} addresses in the {self.what} header")
            if not (self.is_special(",") or self.is_special(";")):
                raise self.fail("a group without its closing ';'")

    def display(self, words: list[_Token]) -> str:
        """The display text of a phrase, encoded words decoded (RFC 2047 §6.2 spacing)."""
        parts: list[str] = []
        previous_encoded = False
        for w in words:
            m = _ENCODED_WORD.fullmatch(w.text) if w.kind == "atom" else None
            if m is not None:
                text = decode_encoded_word(m.group(1), m.group(2), m.group(3), self.what)
            else:
                text = _decode_text(w.text, self.what)
            if parts and w.space and not (m is not None and previous_encoded):
                parts.append(" ")
            parts.append(text)
            previous_encoded = m is not None
        return "".join(parts)

    def shown(self, display: str) -> list[str]:
        """
        Every address a reader could be shown by a display text: in the text itself, and in
        what a more lenient reader decodes from it (encoded words the tokenizer split at dots,
        or encoded twice).
        """
        if "=?" in display:
            return addresses_in_text(_decode_text(display, self.what))
        return addresses_in_text(display)

    def named(self, words: list[_Token], mailbox: Mailbox) -> Mailbox:
        name = self.display(words)
        shown = {self._canonical_text(a) for a in self.shown(name)}
        if shown - {mailbox.canonical}:
            raise self.fail("the display name shows an address other than the mailbox's own")
        return attrs.evolve(mailbox, display_name=name)

    @staticmethod
    def _canonical_text(text: str) -> str:
        local, _, domain = text.rpartition("@")
        return canonical_address(local, domain)

    def addr_spec(self, in_angle: bool = False, local_words: Optional[list[_Token]] = None) -> Mailbox:
        if local_words is None:
            if in_angle and self.is_special("@"):
                raise self.fail("source routes are not accepted")
            if in_angle and self.is_special(">"):
                raise self.fail("an empty address")
            local_words = self.phrase()
        local = self.local_part(local_words)
        if not self.is_special("@"):
            raise self.fail("an address without '@domain'")
        self.i += 1
        domain = self.domain()
        return Mailbox("", local, domain)

    def local_part(self, words: list[_Token]) -> str:
        if not words:
            raise self.fail("an address without a local part")
        pieces: list[str] = []
        expect_word = True
        for w in words:
            if expect_word:
                if w.kind not in ("atom", "quoted"):
                    raise self.fail("a malformed local part")
                pieces.append(w.text)
            else:
                if not (w.kind == "special" and w.text == "."):
                    raise self.fail("a local part of several words (a name without angle brackets?)")
                pieces.append(".")
            expect_word = not expect_word
        if expect_word:
            raise self.fail("a local part ending in '.'")
        local = "".join(pieces)
        if not local.isascii():
            raise self.fail("a non-ASCII address (SMTPUTF8 is not supported)")
        if any(w.kind == "atom" and "=?" in w.text for w in words):
            raise self.fail("an encoded word in an address")
        if not local or len(local) > MAX_LOCAL_PART:
            raise self.fail("a local part that is empty or longer than 64 characters")
        return local

    def domain(self) -> str:
        t = self.peek()
        if t is None:
            raise self.fail("an address without a domain")
        if t.kind == "literal":
            self.i += 1
            if not t.text.isascii():
                raise self.fail("a non-ASCII domain literal")
            return t.text
        labels: list[str] = []
        while True:
            t = self.peek()
            if t is None or t.kind != "atom":
                raise self.fail("a malformed domain")
            if not t.text.isascii():
                raise self.fail("a non-ASCII domain (SMTPUTF8 is not supported)")
            if not _LABEL.match(t.text):
                raise self.fail(f"a malformed domain label {t.text[:30]!r}")
            labels.append(t.text)
            self.i += 1
            if not self.is_special("."):
                break
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt.kind != "atom":
                labels.append("")  # a single final dot (absolute domain name)
                break
        domain = ".".join(labels)
        if len(domain) > MAX_DOMAIN:
            raise self.fail("a domain longer than 255 characters")
        return domain


def _check_line(value: str, what: str) -> None:
    """Comments may hold any character; a line break or NUL anywhere is refused first."""
    if "\r" in value or "\n" in value or "\x00" in value:
        raise MalformedHeader(f"{what}: a line break or NUL in the value")


def _count_encoded_words(value: str, limits: MailLimits, what: str) -> None:
    if "=?" not in value:
        return
    count = 0
    for _ in _ENCODED_WORD.finditer(value):
        count += 1
        if count > limits.max_encoded_words:
            raise LimitExceeded(f"more than {limits.max_encoded_words} encoded words in the {what} header")


def parse_address_list(value: str, what: str = "address", limits: MailLimits = DEFAULT_LIMITS) -> AddressList:
    """
    The entries of an address field's unfolded value.  ``what`` names the field in refusals.
    Raises L{MailRefusal} (L{MalformedHeader} or L{LimitExceeded}).

    The common shapes (L{gateway.mail.simple}) are read by one regular expression per entry;
    everything else, and everything refused, by the general tokenizer and parser below.
    """
    simple = simple_entries(value, limits.max_addresses, limits.max_tokens)
    if simple is None:
        return general_address_list(value, what, limits)
    if any(phrase is not None for _, _, _, phrase in simple):
        return _with_encoded_names(value, simple, what, limits)
    return AddressList(tuple([Mailbox(name, local, domain) for name, local, domain, _ in simple]))  # type: ignore[arg-type]


def _with_encoded_names(value: str, simple: list, what: str, limits: MailLimits) -> AddressList:
    """
    Simple entries of which some display names hold encoded words: those go through the
    general reader's own display-name code (decoding, what the name shows), in order, after the
    encoded-word limit — the refusals the general reader would give, in its order.
    """
    _count_encoded_words(value, limits, what)
    parser = _Parser([], what, limits)
    items: list[Address] = []
    for name, local, domain, phrase in simple:
        if phrase is None:
            items.append(Mailbox(name, local, domain))
            continue
        words = [_Token(kind, text, i > 0) for i, (kind, text) in enumerate(phrase)]
        items.append(parser.named(words, Mailbox("", local, domain)))
    return AddressList(tuple(items))


def general_address_list(value: str, what: str = "address", limits: MailLimits = DEFAULT_LIMITS) -> AddressList:
    """L{parse_address_list} without its fast path: every shape, every refusal (tests compare the two)."""
    _check_line(value, what)
    _count_encoded_words(value, limits, what)
    comments: list[str] = []
    parser = _Parser(_tokenize(value, limits, what, comments), what, limits)
    found = parser.address_list()
    if comments:
        _check_comments(comments, found, parser)
    return found


def _check_comments(comments: list[str], found: AddressList, parser: "_Parser") -> None:
    """
    ``addr (Full Name)`` is the old way to write a display name and many readers still show a
    comment as the name: a comment may show only addresses of the field's own mailboxes, as a
    display name may (the same deception otherwise).  One pass over each comment's text.
    """
    own = {m.canonical for m in found.mailboxes}
    for text in comments:
        # Decoded leniently (a comment is free text: an undecodable word stays as written).
        for shown in addresses_in_text(text) + (addresses_in_text(decode_unstructured(text)) if "=?" in text else []):
            if parser._canonical_text(shown) not in own:
                raise MalformedHeader(f"{parser.what}: a comment shows an address that is not one of the field's mailboxes")


def parse_addr_spec(text: str) -> Mailbox:
    """
    One bare address (``local@domain`` or ``<local@domain>``), as in the envelope, a pattern's
    exact form or a configuration value.  Raises L{MailRefusal}.
    """
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text:
        raise MalformedHeader("address: empty")
    simple = simple_addr_spec(text)
    if simple is not None:
        return Mailbox("", *simple)
    return _general_addr_spec(text)


def _general_addr_spec(text: str) -> Mailbox:
    """L{parse_addr_spec} of a stripped, non-empty ``text`` without its fast path."""
    _check_line(text, "address")
    parser = _Parser(_tokenize(text, DEFAULT_LIMITS, "address"), "address", DEFAULT_LIMITS)
    mailbox = parser.addr_spec()
    if parser.i != parser.n:
        raise MalformedHeader("address: more than one address")
    return mailbox


def canonical(address: str) -> Optional[str]:
    """The canonical spelling of one bare address, or None when it does not parse."""
    try:
        return parse_addr_spec(address).canonical
    except MailRefusal:
        return None


def mailbox_key(address: str) -> Optional[str]:
    """The canonical spelling without ``+tag`` (see L{Mailbox.key}), or None when it does not parse."""
    try:
        return parse_addr_spec(address).key
    except MailRefusal:
        return None


__all__ = [
    "Mailbox", "Group", "AddressList", "parse_address_list", "parse_addr_spec", "canonical", "mailbox_key",
    "decode_encoded_word", "decode_unstructured", "addresses_in_text", "MAX_LOCAL_PART", "MAX_DOMAIN",
]
