"""
The fast paths of the mail grammar against its general paths (issue 13): the same input must
give the same result or the same refusal (class, reply code and text), whichever path reads it.

- L{parse_address_list} (common shapes by one expression per entry, L{gateway.mail.simple})
  against L{general_address_list} (the tokenizer and parser) on generated address fields:
  random mixes of plain and quoted names, comments (flat, nested, with addresses, unterminated),
  encoded words (valid, unknown charset, decoding to a line break or to an address), groups,
  source routes, domain literals, final dots, non-ASCII, odd white space, empty entries, long
  parts, and under tight limits;
- L{parse_addr_spec} against its general path on bare addresses;
- L{split_fields} (one split at the CRLFs no fold follows) against the line-by-line reading it
  replaced, on sections with folds, stray continuation lines, empty lines, bare CR/LF;
- L{parse_header_section} against the judge as it was before its fast paths (fields split line
  by line and judged after, the general address reader only), on generated sections
  (duplicates, folds, CR/LF inside values, non-ASCII, tight limits) and on every shape of
  L{tests.mail_shapes}.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import gateway.mail.addresses as addresses_module
from gateway.mail.addresses import AddressList, general_address_list, parse_addr_spec, parse_address_list
from gateway.mail.errors import LimitExceeded, MailRefusal, MalformedHeader
from gateway.mail.fields import Field, TooManyFields, field_name, is_continuation, is_from_line, split_fields
from gateway.mail.limits import DEFAULT_LIMITS, MailLimits
from gateway.mail.message import (
    ADDRESS_FIELDS,
    SINGLE_FIELDS,
    MessageHeader,
    _check_identity,
    _header_lines,
    display_name_of,
    parse_header_section,
)
from gateway.mail.simple import simple_entries
from tests.mail_shapes import shapes

TIGHT = MailLimits(max_fields=6, max_addresses=2, max_encoded_words=1, max_comment_depth=2, max_tokens=12)
FEW_ADDRESSES = MailLimits(max_fields=6, max_addresses=2)
LIMITS = st.sampled_from([DEFAULT_LIMITS, TIGHT, FEW_ADDRESSES])


def outcome(call: Callable[[], object]) -> tuple:
    """What a reader made of an input: its result, or the refusal's class, reply and text."""
    try:
        return ("accepted", call())
    except MailRefusal as e:
        return ("refused", type(e).__name__, e.code, e.status, e.text)


def split_fields_by_lines(header_lines: bytes, limit: Optional[int] = None) -> list[Field]:
    """The line-by-line field splitting that L{split_fields} replaced (the reference reading)."""
    fields: list[Field] = []
    if not header_lines:
        return fields
    lines = header_lines.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    current: list[bytes] = []
    name, obsolete = b"", False
    for line in lines:
        if is_continuation(line) and current:
            current.append(line + b"\r\n")
            continue
        if current:
            fields.append(Field(name, b"".join(current), obsolete))
            if limit is not None and len(fields) > limit:
                raise TooManyFields(limit)
        found = field_name(line)
        name, obsolete = found if found is not None else (b"", False)
        current = [line + b"\r\n"]
    if current:
        fields.append(Field(name, b"".join(current), obsolete))
        if limit is not None and len(fields) > limit:
            raise TooManyFields(limit)
    return fields


@contextmanager
def general_paths_only() -> Iterator[None]:
    """The address readers with their fast paths replaced by the general ones, for one comparison."""
    saved = addresses_module.simple_entries, addresses_module.simple_addr_spec
    addresses_module.simple_entries = lambda *args: None
    addresses_module.simple_addr_spec = lambda *args: None
    try:
        yield
    finally:
        addresses_module.simple_entries, addresses_module.simple_addr_spec = saved


def judge_by_the_general_rules(section: bytes, limits: MailLimits = DEFAULT_LIMITS) -> MessageHeader:
    """
    L{parse_header_section} as it was before its fast paths (the reference reading): fields
    split line by line, every field made a L{Field} first and judged after, address fields
    read by the general reader only.
    """
    lines = _header_lines(section)
    if b"\x00" in lines:
        raise MalformedHeader("NUL byte in the header section")
    try:
        fields = split_fields_by_lines(lines, limits.max_fields)
    except TooManyFields:
        raise LimitExceeded(f"more than {limits.max_fields} header fields") from None
    seen: set[str] = set()
    values: dict[str, list[str]] = {}
    for f in fields:
        if not f.name:
            if is_from_line(f.raw):
                raise MalformedHeader('an mbox "From " line in the header section')
            raise MalformedHeader("a line in the header section that is not a header field")
        lname = f.lname
        if f.obsolete_space:
            raise MalformedHeader(
                f"white space before the colon in the {display_name_of(lname)} header field "
                "(obsolete syntax that mail parsers read differently)")
        if lname in SINGLE_FIELDS and lname in seen:
            raise MalformedHeader(f"more than one {display_name_of(lname)} header field")
        seen.add(lname)
        if lname in ADDRESS_FIELDS:
            values.setdefault(lname, []).append(f.value.decode("utf-8", "replace"))
    addresses: dict[str, AddressList] = {}
    for lname, texts in values.items():
        what = display_name_of(lname)
        items: list = []
        for text in texts:
            items.extend(general_address_list(text, what, limits).items)
        if len(items) > limits.max_addresses:
            raise LimitExceeded(f"more than {limits.max_addresses} addresses in the {what} header")
        addresses[lname] = AddressList(tuple(items))
    _check_identity(addresses)
    return MessageHeader(lines, tuple(fields), addresses)


atext_locals = st.sampled_from([
    "alice", "Alice.B", "a+tag", "x_y", "o'hara", "a=b", "bounce=x=y", "a.b.c", "-dash", "{x}", "a`b|c~", "a.b.c.d.e",
])
odd_locals = st.sampled_from([
    '"a b"', '"a\\"b"', "a..b", ".a", "a.", "é", "a=?b", "=?utf-8?q?x?=", "a" * 65, "", "a b", "a(c)b", "a\tb",
])
plain_domains = st.sampled_from(["corp.example", "Corp.Example", "x", "a-b.example", "_dmarc.example", "a1.b2.c3"])
odd_domains = st.sampled_from([
    "corp.example.", "[192.0.2.1]", "[IPv6:2001:db8::1]", "-a.example", "a!b.example", "exämple.org", "a..b",
    ".a", "", ("a" * 63 + ".") * 4 + "example", "corp.example (c)", "corp .example", "a=?b",
])
plain_words = st.sampled_from(["John", "Smith", "Jörg", "O'Brien", "Müller-Lüdenscheid", "x", "a\u00a0b", "王"])
odd_words = st.sampled_from([
    "Q.", "=?utf-8?q?B=C3=BCro?=", "=?utf-8?q?a=0D=0Ab?=", "=?x-unknown?q?a?=", "=?utf-8?b?Y2VvQGNvcnAuZXhhbXBsZQ?=",
    "=?utf-8?q?ceo=40corp.example?=", "ceo@corp.example", "(comment)", "a\x0bb", "\x7f", "@", "a:b", ";", "<", ">",
])
quoted_names = st.sampled_from([
    '"Doe, John"', '""', '"A (x) B"', '"ceo@corp.example"', '"a\\"b"', '"=?utf-8?q?ceo=40corp.example?="', '"tab\there"',
    '"unterminated', '"Jörg <x>"', '"a;b:c"', '" spaced  out "', '"\u00a0nbsp"',
])
comments = st.sampled_from([
    "", "", " (Cron Daemon)", "(work)", " (a (nested) comment)", " (unterminated", " (ceo@evil.example)",
    " (=?utf-8?q?ceo=40evil.example?=)", " (a\\)b)", " ()", " (((((deep)))))",
])
spaces = st.sampled_from(["", "", " ", "  ", "\t", " \t ", "\u00a0"])


@st.composite
def local_parts(draw) -> str:
    return draw(atext_locals if draw(st.integers(0, 3)) else odd_locals)


@st.composite
def domains(draw) -> str:
    return draw(plain_domains if draw(st.integers(0, 3)) else odd_domains)


@st.composite
def display_names(draw) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return ""
    if kind == 1:
        return draw(quoted_names)
    words = draw(st.lists(plain_words if draw(st.integers(0, 2)) else odd_words, min_size=1, max_size=3))
    return draw(spaces).join(words) if draw(st.booleans()) else " ".join(words)


@st.composite
def entries(draw) -> str:
    spec = f"{draw(local_parts())}@{draw(domains())}"
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        entry = spec
    elif kind <= 4:
        entry = f"<{spec}>"
    elif kind <= 7:
        entry = f"{draw(display_names())}{draw(spaces)}<{spec}>"
    elif kind == 8:
        entry = f"{draw(display_names())}:{', '.join(draw(st.lists(entries_flat(), max_size=2)))};"
    else:
        entry = draw(st.sampled_from([f"{spec} <{spec}>", "<@route.example:x@evil.example>", "<>", "a@b c@d", ":;"]))
    return f"{draw(spaces)}{entry}{draw(comments)}{draw(spaces)}"


@st.composite
def entries_flat(draw) -> str:
    spec = f"{draw(local_parts())}@{draw(domains())}"
    return draw(st.sampled_from([spec, f"<{spec}>", f"Name <{spec}>"]))


@st.composite
def address_fields(draw) -> str:
    items = draw(st.lists(entries(), min_size=0, max_size=4))
    separators = st.sampled_from([",", ", ", ",\t", " , ", ",,", ", ,"])
    value = ""
    for i, item in enumerate(items):
        value += (draw(separators) if i else "") + item
    return draw(st.sampled_from(["", "", " ", ",", "\r\n", "\x00"])) + value + draw(st.sampled_from(["", "", ",", " ", "\n"]))


@st.composite
def plain_fields(draw) -> str:
    """Lists of the shapes the fast path reads, so that it is exercised up to and past the limits."""
    items = []
    for _ in range(draw(st.integers(1, 5))):
        spec = f"{draw(atext_locals)}@{draw(plain_domains)}"
        name = draw(st.sampled_from([" ", "  ", "\t", " \t"])).join(draw(st.lists(plain_words, min_size=1, max_size=2)))
        items.append(draw(st.sampled_from([spec, f"<{spec}>", f"{name} <{spec}>", f'"{name}, x "<{spec}>', f"{spec} (c)"])))
    return draw(st.sampled_from([",", ", ", ",\t"])).join(items)


FIELD_NAMES = ["From", "To", "Cc", "Bcc", "Sender", "Reply-To", "Resent-From", "Resent-To", "Subject", "X-Mailer", "to", "FROM"]


@st.composite
def header_sections(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind <= 5:
            name = draw(st.sampled_from(FIELD_NAMES))
            value = draw(address_fields())
            fold = draw(st.sampled_from(["", "", "\r\n ", "\r\n\t", ",\r\n "]))
            cut = draw(st.integers(0, len(value)))
            lines.append(f"{name}:{draw(spaces)}{value[:cut]}{fold}{value[cut:]}")
        else:
            lines.append(draw(st.sampled_from([
                "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "Received: from x\r\n\tby y; Mon, 1 Jan 2024", " stray continuation",
                "From ceo@corp.example Mon Jan  1 00:00:00 2024", "Subject : obsolete", "not a field", "", "X-Bare: a\rb\nc",
                "DKIM-Signature: v=1;\r\n\tb=abc\r\n\t def", "Date: Mon, 1 Jan 2024 00:00:00 +0000", "X:\x00",
            ])))
    ending = draw(st.sampled_from(["\r\n", "\r\n", "\r\n\r\nbody", "", "\r\n "]))
    return "\r\n".join(lines).encode("utf-8") + ending.encode("ascii")


class AddressListDifferentialTests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(address_fields(), plain_fields()), LIMITS)
    def test_fast_and_general_readers_agree(self, value: str, limits: MailLimits) -> None:
        self.assertEqual(
            outcome(lambda: parse_address_list(value, "To", limits)),
            outcome(lambda: general_address_list(value, "To", limits)),
        )

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(local_parts(), domains(), st.sampled_from(["", " ", "<", "\t"]))
    def test_fast_and_general_addr_spec_agree(self, local: str, domain: str, around: str) -> None:
        text = f"{around}{local}@{domain}{'>' if around == '<' else around}"
        fast = outcome(lambda: parse_addr_spec(text))
        with general_paths_only():
            general = outcome(lambda: parse_addr_spec(text))
        self.assertEqual(fast, general)

    def test_the_common_shapes_take_the_fast_path(self) -> None:
        """The shapes the fast path exists for are read by it (otherwise it saves nothing)."""
        for value in [
            " <a@example.com>", "root@host.example.org (Cron Daemon)", 'Alice Example <alice@corp.example>, "Bob Builder" '
            "<bob@corp.example>, carol@corp.example", '"Smith, Dave" <dave.smith@corp.example>',
            "=?utf-8?q?J=C3=B6rg?= <j@x.example>", '"=?utf-8?q?J=C3=B6rg?=" <j@x.example>',
        ]:
            self.assertIsNotNone(simple_entries(value, 1000, 20_000), value)

    def test_what_the_fast_path_leaves_to_the_general_reader(self) -> None:
        for value in [
            "a=?b@c", "a@b (=?utf-8?q?x?=)", "=?utf-8?q?J=C3=B6rg?=.x <j@x.example>", "a@b (x@y)", '"a\\"b" <a@b>', "a@b.", "John Q. Public <j@p>",
            "Team: a@b;", "a@b,,c@d", "a @b", "", "<@r:a@b>", '"a@b" <a@b>', "a" * 65 + "@b",
            # Non-ASCII names and comments: folded as a reader sees them they may show an
            # address (a fullwidth @, an invisible character inside), which the general reader checks.
            "Jörg <j@x.example>", "ceo\uff20corp.example <a@b.example>", '"ceo@corp\u200b.example" <a@b.example>',
            "a@b.example (ceo\uff20corp.example)",
        ]:
            self.assertIsNone(simple_entries(value, 1000, 20_000), value)


class SplitFieldsDifferentialTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from([
        b"From: a@b", b"To: x", b" folded", b"\tfolded", b"", b"Subject : s", b"From x", b"X\r", b"\nY: z", b"Z:\r\n",
        b"name\t:", b" ", b"\r", b":", b"A:", b"\xc3\xa9: v",
    ]), max_size=8), st.sampled_from([b"\r\n", b""]), st.sampled_from([None, 0, 1, 3, 1000]))
    def test_one_split_equals_the_line_by_line_reading(self, lines: list, ending: bytes, limit: Optional[int]) -> None:
        section = b"\r\n".join(lines) + ending

        def read(split: Callable) -> object:
            try:
                return split(section, limit)
            except TooManyFields as e:
                return ("too many", e.args)

        self.assertEqual(read(split_fields), read(split_fields_by_lines))

    def test_bytearray_input_gives_bytes_fields(self) -> None:
        section = bytearray(b"A: b\r\n c\r\n")
        self.assertEqual(split_fields(section), [Field(b"A", b"A: b\r\n c\r\n")])  # type: ignore[arg-type]


class HeaderSectionDifferentialTests(SynchronousTestCase):
    def judge_both_ways(self, section: bytes, limits: MailLimits = DEFAULT_LIMITS, what: str = "") -> None:
        fast = outcome(lambda: parse_header_section(section, limits))
        general = outcome(lambda: judge_by_the_general_rules(section, limits))
        self.assertEqual(fast, general, what)
        if fast[0] == "accepted":
            # MessageHeader compares raw and fields; the parsed addresses are compared here.
            self.assertEqual(fast[1].addresses, general[1].addresses, what)

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(header_sections(), LIMITS)
    def test_fast_and_general_judges_agree(self, section: bytes, limits: MailLimits) -> None:
        self.judge_both_ways(section, limits)

    def test_limits_are_judged_alike_at_their_boundaries(self) -> None:
        """One under, at and one over each limit the fast paths could miscount."""
        for limit in (1, 2, 5):
            limits = MailLimits(max_fields=limit, max_addresses=limit, max_tokens=8 * limit + 7)
            for count in (limit - 1, limit, limit + 1):
                to = ", ".join(f"u{i}@x.example" for i in range(count)) or "a@b"
                fields = [f"X-N{i}: v" for i in range(max(count - 1, 0))]
                self.judge_both_ways(("\r\n".join(fields + [f"To: {to}"]) + "\r\n").encode(), limits, f"{limit}/{count}")

    def test_every_expensive_shape_is_judged_alike(self) -> None:
        for name, section in shapes(8 * 1024).items():
            self.judge_both_ways(section, what=name)

    def test_the_general_readers_are_really_used_inside_the_context(self) -> None:
        """The comparison would be vacuous if the patch did not reach the readers."""
        with general_paths_only():
            self.assertIsNone(addresses_module.simple_entries("a@b", 1000, 20_000))
            self.assertIsNone(addresses_module.simple_addr_spec("a@b"))
        self.assertIsNotNone(addresses_module.simple_entries("a@b", 1000, 20_000))
