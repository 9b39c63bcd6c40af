"""
Boundary tests of L{gateway.smtp.framing}: every limit at exactly its value and one either
side, every place where a CRLF can fall (start of a chunk, start of a window, last byte of the
carry), and each flag's exact value.  Written against mutation testing (issue 8): an off-by-one
change to any of these comparisons makes one of them fail.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.mail.lines import has_long_line
from gateway.smtp.framing import MESSAGE_LINE_LIMIT, DataFraming

MAX = 100  # max_line for the transport-bound tests


class FlagTests(SynchronousTestCase):

    def test_flags_start_false_and_stay_false_for_clean_data(self):
        framing = DataFraming(MAX)
        for flag in ("bare_newline", "line_too_long", "nul", "line_over_998"):
            self.assertIs(getattr(framing, flag), False, flag)
        framing.feed(b"a\r\nb\r\n")
        framing.feed(b"c")
        framing.feed(b"\r\n.\r\n")
        for flag in ("bare_newline", "line_too_long", "nul", "line_over_998"):
            self.assertIs(getattr(framing, flag), False, flag)

    def test_flags_are_true_once_set(self):
        framing = DataFraming(2000)
        framing.feed(b"a\x00\r\n" + b"l" * 999 + b"\r\nbare\ncr\r\n")
        self.assertIs(framing.nul, True)
        self.assertIs(framing.line_over_998, True)
        self.assertIs(framing.bare_newline, True)
        # Later clean data does not clear them.
        framing.feed(b"clean\r\n")
        self.assertEqual((framing.nul, framing.line_over_998, framing.bare_newline), (True, True, True))
        framing = DataFraming(MAX)
        framing.feed(b"x" * (MAX + 2))
        self.assertIs(framing.line_too_long, True)

    def test_lone_cr_and_lone_lf_each_flagged(self):
        for bad in (b"a\rb\r\n", b"a\nb\r\n", b"a\r\r\n", b"\n\r\n"):
            framing = DataFraming(MAX)
            framing.feed(b"ok\r\n" + bad + b"ok\r\n")
            self.assertIs(framing.bare_newline, True, bad)


class EndOfDataTests(SynchronousTestCase):

    def test_empty_line_then_end_at_chunk_start(self):
        """The end marker at offset 0 of a chunk, with nothing carried: an empty line, then the end."""
        framing = DataFraming(MAX)
        self.assertEqual(framing.feed(b"a\r\n"), (b"a\r\n", None))
        self.assertEqual(framing.feed(b"\r\n.\r\nNEXT"), (b"\r\n", b"NEXT"))

    def test_end_marker_starting_at_last_carried_byte(self):
        framing = DataFraming(MAX)
        self.assertEqual(framing.feed(b"a\r\nb\r"), (b"a\r\n", None))
        self.assertEqual(framing.feed(b"\n.\r\nNEXT"), (b"b\r\n", b"NEXT"))

    def test_end_marker_split_after_dot(self):
        framing = DataFraming(MAX)
        self.assertEqual(framing.feed(b"a\r\n."), (b"a\r\n", None))
        self.assertEqual(framing.feed(b"\r\nNEXT\r\n"), (b"", b"NEXT\r\n"))

    def test_immediate_end_and_nothing_after(self):
        self.assertEqual(DataFraming(MAX).feed(b".\r\n"), (b"", b""))
        self.assertEqual(DataFraming(MAX).feed(b"x\r\n.\r\n"), (b"x\r\n", b""))

    def test_dot_line_that_is_not_the_end(self):
        framing = DataFraming(MAX)
        self.assertEqual(framing.feed(b".x\r\n"), (b"x\r\n", None))
        self.assertEqual(framing.feed(b"..\r\n"), (b".\r\n", None))

    def test_crlf_at_chunk_start_completes_the_carried_line(self):
        framing = DataFraming(MAX)
        framing.feed(b"x\r\n")
        self.assertEqual(framing.feed(b"\r\n" + b"a" * MAX), (b"\r\n", None))
        self.assertIs(framing.line_too_long, False)
        self.assertEqual(framing.feed(b"\r\n.\r\n"), (b"a" * MAX + b"\r\n", b""))

    def test_unstuffing_at_the_start_of_a_later_chunk(self):
        framing = DataFraming(MAX)
        framing.feed(b"a\r\n")
        self.assertEqual(framing.feed(b"..b\r\n.c\r\n.\r\n"), (b".b\r\nc\r\n", b""))


class TransportLineBoundTests(SynchronousTestCase):
    """``max_line``: one line of ``max_line`` octets plus a possible CR may be carried, no more."""

    def test_unterminated_first_chunk(self):
        framing = DataFraming(MAX)
        framing.feed(b"a" * (MAX + 1))
        self.assertIs(framing.line_too_long, False)
        framing = DataFraming(MAX)
        framing.feed(b"a" * (MAX + 2))
        self.assertIs(framing.line_too_long, True)

    def test_unterminated_line_growing_over_chunks(self):
        framing = DataFraming(MAX)
        framing.feed(b"a" * 50)
        framing.feed(b"a" * (MAX + 1 - 50))
        self.assertIs(framing.line_too_long, False)
        framing.feed(b"a")
        self.assertIs(framing.line_too_long, True)

    def test_unterminated_line_after_complete_ones(self):
        framing = DataFraming(MAX)
        framing.feed(b"x\r\n" + b"a" * (MAX + 1))
        self.assertIs(framing.line_too_long, False)
        framing = DataFraming(MAX)
        framing.feed(b"x\r\n" + b"a" * (MAX + 2))
        self.assertIs(framing.line_too_long, True)

    def test_complete_lines_at_and_over_the_limit(self):
        framing = DataFraming(MAX)
        framing.feed(b"a" * MAX + b"\r\n")
        self.assertIs(framing.line_too_long, False)
        framing = DataFraming(MAX)
        framing.feed(b"a" * (MAX + 1) + b"\r\n")
        self.assertIs(framing.line_too_long, True)

    def test_complete_line_over_the_limit_before_short_ones(self):
        framing = DataFraming(MAX)
        framing.feed(b"a" * (MAX + 1) + b"\r\nb\r\nc\r\n")
        self.assertIs(framing.line_too_long, True)

    def test_many_short_lines_are_fine(self):
        framing = DataFraming(MAX)
        content, rest = framing.feed(b"abc\r\n" * 100 + b".\r\n")
        self.assertIs(framing.line_too_long, False)
        self.assertEqual((content, rest), (b"abc\r\n" * 100, b""))


class HasLongLineTests(SynchronousTestCase):
    """The window scan itself, with lines at every position relative to a window."""

    def test_short_lines_only(self):
        self.assertIs(has_long_line(b"abc\r\n" * 100, MAX), False)
        self.assertIs(has_long_line(b"\r\n" * 200, MAX), False)

    def test_exact_limit_first_then_short(self):
        self.assertIs(has_long_line(b"a" * MAX + b"\r\n" + b"b" * 10 + b"\r\n", MAX), False)

    def test_one_over_first_then_short(self):
        self.assertIs(has_long_line(b"a" * (MAX + 1) + b"\r\n" + b"b" * 10 + b"\r\n", MAX), True)

    def test_empty_line_then_exact_limit(self):
        self.assertIs(has_long_line(b"\r\n" + b"a" * MAX + b"\r\n", MAX), False)
        self.assertIs(has_long_line(b"\r\n" + b"a" * MAX + b"\r\nb\r\n", MAX), False)

    def test_empty_line_then_one_over(self):
        self.assertIs(has_long_line(b"\r\n" + b"a" * (MAX + 1) + b"\r\n", MAX), True)

    def test_long_line_after_short_ones(self):
        self.assertIs(has_long_line(b"s\r\n" * 40 + b"a" * (MAX + 1) + b"\r\n", MAX), True)
        self.assertIs(has_long_line(b"s\r\n" * 40 + b"a" * MAX + b"\r\n", MAX), False)

    def test_exact_limit_lines_back_to_back(self):
        self.assertIs(has_long_line((b"a" * MAX + b"\r\n") * 5, MAX), False)
        self.assertIs(has_long_line((b"a" * MAX + b"\r\n") * 2 + b"a" * (MAX + 1) + b"\r\n", MAX), True)

    def test_block_no_longer_than_a_window(self):
        self.assertIs(has_long_line(b"a" * MAX + b"\r\n", MAX), False)


class MessageLineLimitTests(SynchronousTestCase):
    """RFC 5322's 998 characters, counted in the unstuffed message; the session is not closed."""

    def test_limit_is_rfc_5322s(self):
        self.assertEqual(MESSAGE_LINE_LIMIT, 998)

    def test_998_fine_999_flagged(self):
        framing = DataFraming(4096)
        framing.feed(b"a" * 998 + b"\r\n")
        self.assertIs(framing.line_over_998, False)
        framing.feed(b"a" * 999 + b"\r\n")
        self.assertIs(framing.line_over_998, True)
        self.assertIs(framing.line_too_long, False)

    def test_999_after_short_lines_in_one_block(self):
        framing = DataFraming(4096)
        framing.feed(b"s\r\n" * 10 + b"a" * 999 + b"\r\nt\r\n")
        self.assertIs(framing.line_over_998, True)

    def test_many_short_lines_not_flagged(self):
        framing = DataFraming(4096)
        framing.feed(b"short line\r\n" * 500)
        self.assertIs(framing.line_over_998, False)

    def test_stuffed_dot_not_counted(self):
        framing = DataFraming(4096)
        content, _ = framing.feed(b".." + b"b" * 997 + b"\r\n")
        self.assertEqual(len(content), 1000)
        self.assertIs(framing.line_over_998, False)
        framing.feed(b"x\r\n.." + b"b" * 997 + b"\r\n")
        self.assertIs(framing.line_over_998, False)
        framing.feed(b"x\r\n.." + b"b" * 998 + b"\r\n")
        self.assertIs(framing.line_over_998, True)

    def test_long_line_completed_in_a_later_chunk(self):
        framing = DataFraming(4096)
        framing.feed(b"a" * 500)
        self.assertIs(framing.line_over_998, False)
        framing.feed(b"a" * 499 + b"\r\n")
        self.assertIs(framing.line_over_998, True)

    def test_last_line_before_the_end_marker(self):
        framing = DataFraming(4096)
        framing.feed(b"a" * 999 + b"\r\n.\r\n")
        self.assertIs(framing.line_over_998, True)


class NulTests(SynchronousTestCase):

    def test_nul_anywhere(self):
        for data in (b"\x00\r\n", b"a\x00\r\n", b"ab\r\ncd\x00\r\n", b"a\r\n\x00.\r\n"):
            framing = DataFraming(MAX)
            framing.feed(data)
            self.assertIs(framing.nul, True, data)

    def test_nul_in_a_later_chunk(self):
        framing = DataFraming(MAX)
        framing.feed(b"clean\r\n")
        self.assertIs(framing.nul, False)
        framing.feed(b"x\x00y")
        framing.feed(b"\r\n.\r\n")
        self.assertIs(framing.nul, True)

    def test_content_is_still_framed(self):
        framing = DataFraming(MAX)
        self.assertEqual(framing.feed(b"a\x00\r\n.\r\nNEXT"), (b"a\x00\r\n", b"NEXT"))
