"""
L{gateway.mail.lines}: the one scanner behind the 998-octet/NUL rule of SMTP intake, the
sendmail command and the spool's import — so the three ways in agree at every boundary.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.mail.lines import MESSAGE_LINE_LIMIT, LineRules, has_long_line


def scan(*pieces: bytes) -> LineRules:
    rules = LineRules()
    for piece in pieces:
        rules.feed(piece)
    rules.finish()
    return rules


class HasLongLineTests(SynchronousTestCase):
    def test_limit_is_fine_one_more_is_not(self) -> None:
        self.assertFalse(has_long_line(b"a" * MESSAGE_LINE_LIMIT + b"\r\n"))
        self.assertTrue(has_long_line(b"a" * (MESSAGE_LINE_LIMIT + 1) + b"\r\n"))

    def test_a_long_line_among_short_ones(self) -> None:
        block = b"short\r\n" * 500 + b"x" * 1500 + b"\r\n" + b"short\r\n" * 500
        self.assertTrue(has_long_line(block))
        self.assertFalse(has_long_line(b"short\r\n" * 2000))

    def test_other_limits(self) -> None:
        self.assertTrue(has_long_line(b"abcdef\r\n", 5))
        self.assertFalse(has_long_line(b"abcde\r\nabcde\r\n", 5))


class LineRulesTests(SynchronousTestCase):
    def test_every_cut_of_a_line_at_the_limit_is_fine(self) -> None:
        message = b"From: a@x.example\r\n\r\n" + b"a" * MESSAGE_LINE_LIMIT + b"\r\nend\r\n"
        for cut in range(len(message) - 1010, len(message)):
            rules = scan(message[:cut], message[cut:])
            self.assertEqual((rules.nul, rules.long_line), (False, False), cut)

    def test_every_cut_of_a_line_one_over_is_found(self) -> None:
        message = b"From: a@x.example\r\n\r\n" + b"a" * (MESSAGE_LINE_LIMIT + 1) + b"\r\nend\r\n"
        for cut in range(len(message) - 1012, len(message)):
            self.assertTrue(scan(message[:cut], message[cut:]).long_line, cut)

    def test_an_unfinished_line_is_found_as_soon_as_it_is_too_long(self) -> None:
        rules = LineRules()
        rules.feed(b"ok\r\n" + b"a" * MESSAGE_LINE_LIMIT)
        self.assertFalse(rules.long_line)
        rules.feed(b"a")
        self.assertTrue(rules.long_line)

    def test_a_cr_at_the_end_may_be_half_a_crlf(self) -> None:
        rules = LineRules()
        rules.feed(b"a" * MESSAGE_LINE_LIMIT + b"\r")
        self.assertFalse(rules.long_line)
        rules.feed(b"\n")
        rules.finish()
        self.assertFalse(rules.long_line)

    def test_last_line_without_crlf(self) -> None:
        self.assertFalse(scan(b"a" * MESSAGE_LINE_LIMIT).long_line)
        self.assertTrue(scan(b"x\r\n", b"a" * (MESSAGE_LINE_LIMIT + 1)).long_line)

    def test_nul_anywhere(self) -> None:
        self.assertTrue(scan(b"abc\r\n", b"d\0e\r\n").nul)
        self.assertFalse(scan(b"abc\r\n").nul)
