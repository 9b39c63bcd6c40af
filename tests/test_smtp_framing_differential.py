"""
L{gateway.smtp.framing.DataFraming} against the same rules written the slow, obvious way (one
line at a time in Python), on random streams cut at random places.

The framing takes shortcuts to stay cheap per octet (``memchr`` hops over dots, one
``replace`` of CRLF for bare CR / LF, the end marker found from the first dot-line); each
shortcut is a way to get the end of data, the unstuffing or a flag wrong at some cut point.
Here every call's ``(content, rest)`` and every flag after every call must equal the
line-by-line model's, for streams with dots at line starts and elsewhere, more dots than the hops take, bare CR and
LF, the fake end markers of SMTP smuggling, NUL, lines around 998 octets and around the
transport bound, and the end marker wherever a chunk boundary falls.
"""

from __future__ import annotations

import random
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.framing import _DOT_HOPS, DataFraming, first_dot_line, has_bare_newline

FLAGS = ("bare_newline", "line_too_long", "nul", "line_over_998")
FAKE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\r\r\n.\r\r\n"]


class LineByLineFraming:
    """The rules of the module docstring of L{gateway.smtp.framing}, one CRLF line at a time."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.bare_newline = self.line_too_long = self.nul = self.line_over_998 = False
        self.carry = b""

    def feed(self, data: bytes) -> tuple[bytes, Optional[bytes]]:
        buf = self.carry + data
        out, pos = [], 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            line = buf[pos:eol]
            if line == b".":
                self.carry = b""
                return b"".join(out), buf[eol + 2:]
            unstuffed = line[1:] if line.startswith(b".") else line
            self.line_too_long |= len(line) > self.max_line
            self.bare_newline |= b"\r" in line or b"\n" in line
            self.nul |= b"\0" in line
            self.line_over_998 |= len(unstuffed) > 998
            out.append(unstuffed + b"\r\n")
            pos = eol + 2
        self.carry = buf[pos:]
        self.line_too_long |= len(self.carry) > self.max_line + 1
        return b"".join(out), None


def random_line(rng: random.Random, max_line: int) -> bytes:
    """One piece of a stream: mostly ordinary lines, now and then something the rules care about."""
    kind = rng.randrange(20)
    text = b"X" * rng.randrange(0, 90)
    if kind == 0:
        return b"." + text + b"\r\n"                       # stuffed
    if kind == 1:
        return b".." + b"\r\n"                              # a stuffed lone dot
    if kind == 2:
        return b"a.b. c." * rng.randrange(1, 8) + b"\r\n"   # dots, none at a line start
    if kind == 3:
        return text + rng.choice([b"\r", b"\n"]) + text + b"\r\n"
    if kind == 4:
        return rng.choice(FAKE_ENDS) + text + b"\r\n"
    if kind == 5:
        return text + b"\0" + b"\r\n"
    if kind == 6:
        return rng.choice([b"", b"."]) + b"L" * rng.randrange(996, 1001) + b"\r\n"
    if kind == 7:
        return b"T" * rng.randrange(max_line - 2, max_line + 3) + b"\r\n"
    if kind == 8 and rng.randrange(4) == 0:
        return b".\r\n"                                     # the end, early
    return text + b"\r\n"


def random_stream(rng: random.Random, max_line: int) -> bytes:
    pieces = [random_line(rng, max_line) for _ in range(rng.randrange(0, 60))]
    if rng.randrange(3):
        pieces.append(b".\r\nNEXT\r\n")
    return b"".join(pieces)


def random_cuts(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted({rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 12))}) if data else []
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


class DifferentialTests(SynchronousTestCase):

    def assertSameFraming(self, max_line: int, chunks: list[bytes]) -> None:
        fast, model = DataFraming(max_line), LineByLineFraming(max_line)
        for i, chunk in enumerate(chunks):
            got, want = fast.feed(chunk), model.feed(chunk)
            where = f"chunk {i} of {chunks!r:.300}"
            self.assertEqual(got, want, where)
            self.assertEqual([getattr(fast, f) for f in FLAGS], [getattr(model, f) for f in FLAGS], where)
            if want[1] is not None or model.line_too_long:
                return

    def test_random_streams_cut_at_random_places(self):
        rng = random.Random(13)
        for _ in range(1500):
            max_line = rng.choice([100, 1000, 1200, 4096])
            data = random_stream(rng, max_line)
            self.assertSameFraming(max_line, random_cuts(rng, data))

    def test_end_marker_at_every_cut_point(self):
        """Two chunks, the boundary at every offset: before, inside and after the end marker, after stuffed lines."""
        data = (
            b"Subject: a.b.c\r\n\r\n" + b"x. y. z.\r\n" * 3 + b"..stuffed\r\n" + b"a.\r\n" * (_DOT_HOPS + 2)
            + b".\r\n" + b"..\r\n" + b"tail\r\n.\r\nNEXT\r\n"
        )
        for cut in range(len(data) + 1):
            self.assertSameFraming(1000, [data[:cut], data[cut:]])
        for cut in range(len(data) - 20, len(data) + 1):
            self.assertSameFraming(1000, [data[:cut - 3], data[cut - 3:cut], data[cut:]])

    def test_one_octet_at_a_time(self):
        rng = random.Random(5)
        for _ in range(40):
            data = random_stream(rng, 100)[:600]
            self.assertSameFraming(100, [data[i:i + 1] for i in range(len(data))])

    def test_large_blocks_without_dots(self):
        """
        The 1 MB shape: long runs of lines without a dot, then the end marker in the last piece;
        in reads of 64 KB, cut anywhere, and all at once (over the size where bare CR / LF are
        counted instead of split), with and without a bare LF.
        """
        body = b"".join(b"%dXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\r\n" % (i % 10) for i in range(4000))
        data = b"From: <a@example.com>\r\n\r\n" + body + b".\r\n"
        rng = random.Random(7)
        for _ in range(10):
            self.assertSameFraming(64 * 1024, random_cuts(rng, data))
        self.assertSameFraming(64 * 1024, [data[i:i + 65536] for i in range(0, len(data), 65536)])
        self.assertSameFraming(64 * 1024, [data])
        self.assertSameFraming(64 * 1024, [data[:200_000] + b"\n" + data[200_000:]])


class FirstDotLineTests(SynchronousTestCase):

    def naive(self, block: bytes) -> int:
        if block.startswith(b"."):
            return 0
        found = block.find(b"\r\n.")
        return found + 2 if found >= 0 else -1

    def test_no_dot_and_dot_at_start(self):
        self.assertEqual(first_dot_line(b"abc\r\n", 999), -1)
        self.assertEqual(first_dot_line(b".abc\r\n", 999), 0)
        self.assertEqual(first_dot_line(b"a\r\n.b\r\n", 999), 3)

    def test_dots_not_at_line_start(self):
        self.assertEqual(first_dot_line(b"a.b\r\nc.\r\n", 999), -1)
        # A dot after a bare LF or a bare CR does not start a line.
        self.assertEqual(first_dot_line(b"a\n.b\r\n", 999), -1)
        self.assertEqual(first_dot_line(b"a\r.b\r\n", 999), -1)
        self.assertEqual(first_dot_line(b"\n.b\r\n", 999), -1)

    def test_more_dots_than_the_hops_take(self):
        for before in range(_DOT_HOPS - 2, _DOT_HOPS + 3):
            block = b"a.\r\n" * before + b".x\r\n"
            self.assertEqual(first_dot_line(block, len(block)), self.naive(block), before)
            block = b"a.\r\n" * before + b"b\r\n"
            self.assertEqual(first_dot_line(block, len(block)), -1, before)

    def test_nothing_at_or_after_stop_counts(self):
        """Only the whole lines are searched, not the unfinished one after them."""
        self.assertEqual(first_dot_line(b"a\r\n.b", 3), -1)
        self.assertEqual(first_dot_line(b".b", 0), -1)
        for before in range(_DOT_HOPS - 2, _DOT_HOPS + 3):
            block = b"a.\r\n" * before
            self.assertEqual(first_dot_line(block + b".x", len(block)), -1, before)

    def test_random_blocks(self):
        rng = random.Random(21)
        alphabet = b"..ab\r\n"
        for _ in range(3000):
            block = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
            stop = rng.randrange(len(block) + 1)
            self.assertEqual(first_dot_line(block, stop), self.naive(block[:stop]), (block, stop))


class BareNewlineTests(SynchronousTestCase):

    def counted(self, block: bytes) -> bool:
        crlf = block.count(b"\r\n")
        return block.count(b"\r") != crlf or block.count(b"\n") != crlf

    def test_clean_and_each_kind_of_bare(self):
        self.assertIs(has_bare_newline(b""), False)
        self.assertIs(has_bare_newline(b"\r\n\r\nabc\r\n"), False)
        for bad in (b"a\rb\r\n", b"a\nb\r\n", b"a\r\r\n", b"\n\r\n", b"\n\r\r\n", b"a\r\n\r\r\n"):
            self.assertIs(has_bare_newline(bad), True, bad)

    def test_other_line_breaks_of_str_are_not_newlines_in_bytes(self):
        self.assertIs(has_bare_newline(b"a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\r\n"), False)

    def test_large_blocks(self):
        """A read's worth and far more than any read: a bare CR or LF deep inside is found."""
        for size in (64 * 1024, 1024 * 1024):
            block = b"x" * 78 + b"\r\n"
            block = block * (size // len(block))
            self.assertIs(has_bare_newline(block), False, size)
            self.assertIs(has_bare_newline(block[:-500] + b"\n" + block[-500:]), True, size)
            self.assertIs(has_bare_newline(block[:-500] + b"\r" + block[-500:]), True, size)

    def test_random_blocks_agree_with_counting(self):
        rng = random.Random(34)
        alphabet = b"ab\r\n\r\n\x0b\x85"
        for _ in range(3000):
            block = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) + b"\r\n"
            self.assertEqual(has_bare_newline(block), self.counted(block), block)
