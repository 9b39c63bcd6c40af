"""
The shortcuts of L{gateway.smtp.headers} give the answers of the plain way.

L{MessageDates} formats a date once per second: for every instant, including the last
microseconds of a second and a clock that steps back, it must give what formatting that
instant gives.  L{HeaderCollector} scans the first content in place and copies only what
continues: however the content is cut into whole-line pieces, it must find the same section,
body, names and stopping line, and say ``overflowed`` at the same point.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.headers import HeaderCollector, MessageDates, message_date, missing_headers, received_header

BASE = 1_764_477_055.0  # 2025-11-30 04:30:55 UTC


class MessageDatesTests(SynchronousTestCase):

    def test_same_text_as_formatting_each_instant(self):
        dates = MessageDates()
        instants = [BASE + offset for offset in (0.0, 0.25, 0.998, 0.9989, 0.999, 0.9995, 0.999999, 0.9999996, 0.9999999, 1.0, 1.5)]
        instants += [0.0, 0.5, -0.5, -1.0, -1.0000004, BASE + 86400.3, BASE + 0.1]  # and back in time
        rng = random.Random(3)
        instants += [BASE + rng.uniform(-5, 5) for _ in range(2000)]
        instants += [BASE + rng.randrange(0, 10) + 1 - rng.choice([1e-7, 4e-7, 5e-7, 6e-7, 1e-6, 1e-3]) for _ in range(500)]
        for when in instants:
            self.assertEqual(dates(when), message_date(when), repr(when))

    def test_formats_once_per_second(self):
        dates = MessageDates()
        first = dates(BASE + 0.1)
        self.assertIs(dates(BASE + 0.9), first)
        self.assertEqual(dates(BASE + 1.1), message_date(BASE + 1.1))
        self.assertIsNot(dates(BASE + 1.1), first)

    def test_received_and_date_lines_use_it(self):
        dates = MessageDates()
        seen = []

        def recording(when: float) -> str:
            seen.append(when)
            return dates(when)

        header = received_header("c.test", "192.0.2.1", "gw.test", "Q1", False, False, BASE, recording)
        self.assertEqual(header, received_header("c.test", "192.0.2.1", "gw.test", "Q1", False, False, BASE))
        lines = missing_headers(set(), "gw.test", "Q1", BASE, False, True, recording)
        self.assertEqual(lines, missing_headers(set(), "gw.test", "Q1", BASE, False, True))
        self.assertEqual(seen, [BASE, BASE])


def collect(pieces: list[bytes], limit: int = 4096) -> tuple:
    """Feed ``pieces``; the answer, names, stopping line and ``overflowed`` after each piece."""
    collector = HeaderCollector(limit)
    steps = []
    for i, piece in enumerate(pieces):
        found = collector.feed(piece)
        steps.append(collector.overflowed)
        if found is not None:
            headers, body = found
            return (headers, body + b"".join(pieces[i + 1:])), collector.names, collector.stopped_at, steps
    return collector.finish_at_end(), collector.names, collector.stopped_at, steps


def whole_line_pieces(rng: random.Random, content: bytes) -> list[bytes]:
    lines = content.splitlines(keepends=True)
    cuts = sorted({rng.randrange(len(lines) + 1) for _ in range(rng.randrange(0, 6))})
    bounds = [0] + cuts + [len(lines)]
    return [b"".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


class HeaderCollectorPiecesTests(SynchronousTestCase):

    SECTIONS = [
        b"From: <a@example.com>\r\nTo: <b@example.com>\r\n\r\nbody\r\nmore\r\n",
        b"Subject: x\r\n folded\r\n\tagain\r\n\r\n",
        b"Subject: x\r\nnot a field\r\nbody\r\n",
        b" starts folded\r\nbody\r\n",
        b"From sender Mon Nov 30\r\nSubject: x\r\n\r\n",
        b"\r\nbody only\r\n",
        b"Subject: only headers\r\nDate: now\r\n",
        b"Subject: " + b"y" * 200 + b"\r\n" + b"X-Long: " + b"z" * 300 + b"\r\n\r\nbody\r\n",
    ]

    def test_every_cut_into_whole_lines_gives_the_same_section(self):
        rng = random.Random(8)
        for content in self.SECTIONS:
            whole = collect([content])
            lines = collect(content.splitlines(keepends=True))
            self.assertEqual(whole[:3], lines[:3], content)
            for _ in range(30):
                self.assertEqual(collect(whole_line_pieces(rng, content))[:3], whole[:3], content)

    def test_answers_are_bytes(self):
        for pieces in ([self.SECTIONS[0]], self.SECTIONS[0].splitlines(keepends=True)):
            (headers, body), _, _, _ = collect(pieces)
            self.assertIs(type(headers), bytes)
            self.assertIs(type(body), bytes)
            self.assertEqual((headers, body), (b"From: <a@example.com>\r\nTo: <b@example.com>\r\n", b"body\r\nmore\r\n"))

    def test_overflow_seen_at_the_same_piece(self):
        content = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 40) for i in range(40)) + b"\r\nbody\r\n"
        self.assertEqual(collect([content], limit=1000)[3], [True])
        lines = content.splitlines(keepends=True)
        steps = collect(lines, limit=1000)[3]
        over = [sum(map(len, lines[:i + 1])) > 1000 for i in range(len(steps))]
        self.assertEqual(steps, over)
        self.assertIn(True, steps)

    def test_unfinished_first_piece_is_kept(self):
        collector = HeaderCollector(4096)
        self.assertIsNone(collector.feed(b"Subject: x\r\n"))
        self.assertIsNone(collector.feed(b"To: <b@example.com>\r\n"))
        self.assertEqual(collector.feed(b"\r\nbody\r\n"), (b"Subject: x\r\nTo: <b@example.com>\r\n", b"body\r\n"))
        self.assertEqual(collector.names, {b"subject", b"to"})
