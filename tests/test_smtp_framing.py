"""
Pure unit tests of the DATA framing, header section handling, command argument parsing and the
AUTH exchange — the parts of the intake that decide what a byte stream means.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.model import Limits
from gateway.policy.interfaces import HeaderEdit
from gateway.smtp.addresses import (
    parse_helo,
    parse_mail_from,
    parse_rcpt_to,
    recipient_key,
)
from gateway.smtp.auth import CANCELLED, AuthExchange, Challenge, Ready, Refusal
from gateway.smtp.framing import DataFraming
from gateway.smtp.headers import HeaderCollector, apply_edits, received_header
from gateway.smtp.intake import BARE_NEWLINE, HEADER_TOO_BIG, TOO_BIG, MessageIntake

# The fake end-of-data sequences of the 2023 SMTP smuggling research (SEC Consult,
# https://sec-consult.com/blog/detail/smtp-smuggling-spoofing-e-mails-worldwide/; the real one is
# CRLF "." CRLF, RFC 5321 §4.1.1.4).
FAKE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\r\r\n.\r\r\n"]


def feed_all(framing: DataFraming, data: bytes, step: int = 0):
    """Feed ``data`` whole or in ``step``-sized pieces; returns (content, rest)."""
    pieces = [data] if not step else [data[i:i + step] for i in range(0, len(data), step)]
    out = b""
    for i, piece in enumerate(pieces):
        content, rest = framing.feed(piece)
        out += content
        if rest is not None:
            return out, rest + b"".join(pieces[i + 1:])
    return out, None


class DataFramingTests(SynchronousTestCase):

    def test_end_marker_and_rest(self):
        content, rest = feed_all(DataFraming(1000), b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        self.assertEqual(content, b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(rest, b"QUIT\r\n")

    def test_empty_message(self):
        content, rest = feed_all(DataFraming(1000), b".\r\nNOOP\r\n")
        self.assertEqual((content, rest), (b"", b"NOOP\r\n"))

    def test_every_chunk_boundary(self):
        """Splitting the stream anywhere (down to single bytes) gives the same result."""
        data = b"a\r\n..b\r\n.c\r\n\r\n...\r\nend\r\n.\r\nNEXT"
        expected = feed_all(DataFraming(1000), data)
        self.assertEqual(expected, (b"a\r\n.b\r\nc\r\n\r\n..\r\nend\r\n", b"NEXT"))
        for step in range(1, len(data)):
            self.assertEqual(feed_all(DataFraming(1000), data, step), expected, f"step {step}")

    def test_dot_unstuffing_first_line(self):
        content, rest = feed_all(DataFraming(1000), b"..first\r\n.\r\n")
        self.assertEqual(content, b".first\r\n")

    def test_fake_end_markers_stay_inside_and_flag_bare_newlines(self):
        for fake in FAKE_ENDS:
            framing = DataFraming(1000)
            data = b"legit body" + fake + b"MAIL FROM:<ceo@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n"
            content, rest = feed_all(framing, data)
            self.assertTrue(framing.bare_newline, fake)
            if fake == b"\r\r\n.\r\r\n":
                # CRLF-only line splitting: "legit body\r" CRLF ".\r" CRLF — not an end line.
                self.assertIn(b"MAIL FROM", content)
            self.assertEqual(rest, b"QUIT\r\n", fake)
            self.assertIn(b"smuggled", content, fake)

    def test_bare_cr_before_real_end(self):
        framing = DataFraming(1000)
        content, rest = feed_all(framing, b"body\r\r\n.\r\nNOOP\r\n")
        self.assertTrue(framing.bare_newline)
        self.assertEqual(rest, b"NOOP\r\n")

    def test_clean_message_has_no_bare_newline(self):
        framing = DataFraming(1000)
        feed_all(framing, b"a\r\nb\r\n\r\n.\r\n", step=3)
        self.assertFalse(framing.bare_newline)

    def test_long_line_in_block(self):
        framing = DataFraming(100)
        framing.feed(b"short\r\n" + b"x" * 101 + b"\r\nmore\r\n")
        self.assertTrue(framing.line_too_long)

    def test_line_at_limit_is_fine(self):
        framing = DataFraming(100)
        content, rest = feed_all(framing, (b"y" * 100 + b"\r\n") * 50 + b".\r\n", step=37)
        self.assertFalse(framing.line_too_long)
        self.assertEqual(len(content), 102 * 50)

    def test_endless_line_is_bounded(self):
        framing = DataFraming(100)
        for _ in range(10):
            framing.feed(b"z" * 30)
        self.assertTrue(framing.line_too_long)
        self.assertLessEqual(len(framing._carry), 300)

    def test_long_line_split_over_chunks(self):
        framing = DataFraming(100)
        framing.feed(b"ok\r\n" + b"x" * 60)
        self.assertFalse(framing.line_too_long)
        framing.feed(b"x" * 60 + b"\r\n")
        self.assertTrue(framing.line_too_long)


class HeaderTests(SynchronousTestCase):

    def test_collector_finds_blank_line(self):
        c = HeaderCollector(1000)
        self.assertIsNone(c.feed(b"Subject: a\r\n"))
        headers, body = c.feed(b" folded\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n")
        self.assertEqual(headers, b"Subject: a\r\n folded\r\nMessage-ID: <x@y>\r\n")
        self.assertEqual(body, b"body\r\n")
        self.assertEqual(c.names, {b"subject", b"message-id"})

    def test_collector_non_header_line_ends_headers(self):
        c = HeaderCollector(1000)
        headers, body = c.feed(b"just text\r\nSubject: no\r\n")
        self.assertEqual((headers, body), (b"", b"just text\r\nSubject: no\r\n"))

    def test_collector_overflow(self):
        c = HeaderCollector(50)
        self.assertIsNone(c.feed(b"X-A: " + b"a" * 60 + b"\r\n"))
        self.assertTrue(c.overflowed)

    def test_apply_edits(self):
        lines = b"Subject: old\r\nX-Keep: 1\r\nX-Drop: a\r\n b\r\nX-Drop: c\r\n"
        edited = apply_edits(lines, [
            HeaderEdit("remove", "X-Drop"),
            HeaderEdit("replace", "subject", "Grüße"),
            HeaderEdit("add", "X-New", "v"),
        ])
        self.assertEqual(
            edited,
            b"subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nX-Keep: 1\r\nX-New: v\r\n",
        )

    def test_received_header_has_no_login_and_is_crlf_folded(self):
        header = received_header("client.test", "2001:db8::1", "gw.test", "Q1", True, True, 0)
        self.assertTrue(header.startswith(b"Received: from client.test ([IPv6:2001:db8::1])\r\n\t"))
        self.assertIn(b"with ESMTPSA id Q1", header)
        self.assertIn(b"tls=yes; authenticated", header)
        self.assertNotIn(b"\n\n", header.replace(b"\r\n", b""))
        self.assertEqual(header.count(b"\n"), header.count(b"\r\n"))


class _Writer:
    queue_id = "Q1"

    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += data


class MessageIntakeTests(SynchronousTestCase):

    def intake(self, **limits):
        writer = _Writer()
        return writer, MessageIntake(writer, Limits(**limits), lambda names: (b"Received: x\r\n", b"" if b"date" in names else b"Date: now\r\n"))

    def test_prefix_and_body(self):
        writer, intake = self.intake()
        self.assertEqual(intake.feed(b"Subject: s\r\n\r\nhello\r\n.\r\n"), b"")
        self.assertEqual(writer.data, b"Received: x\r\nDate: now\r\nSubject: s\r\n\r\nhello\r\n")
        self.assertEqual(intake.client_header_lines, b"Date: now\r\nSubject: s\r\n")

    def test_headers_only_message_gets_separator(self):
        writer, intake = self.intake()
        intake.feed(b"Date: d\r\n.\r\n")
        self.assertEqual(writer.data, b"Received: x\r\nDate: d\r\n\r\n")

    def test_size_limit(self):
        writer, intake = self.intake(max_message_size=1024)
        # Exactly at the limit is fine...
        self.assertIsNone(intake.feed(b"Subject: s\r\n\r\n" + b"a" * 500 + b"\r\n" + b"a" * 506 + b"\r\n"))
        self.assertIsNone(intake.refusal)
        # ...one line more is not.
        self.assertEqual(intake.feed(b"b\r\n.\r\n"), b"")
        self.assertEqual(intake.refusal, TOO_BIG)

    def test_header_limit(self):
        writer, intake = self.intake(max_header_size=1024)
        intake.feed(b"X-A: " + b"a" * 990 + b"\r\nX-B: " + b"b" * 100 + b"\r\n")
        intake.feed(b".\r\n")
        self.assertEqual(intake.refusal, HEADER_TOO_BIG)
        self.assertEqual(writer.data, b"")

    def test_bare_lf_refused_and_nothing_more_written(self):
        writer, intake = self.intake()
        intake.feed(b"Subject: s\r\n\r\nok\r\n")
        intake.feed(b"bad\nline\r\nmore\r\n.\r\n")
        self.assertEqual(intake.refusal, BARE_NEWLINE)
        self.assertNotIn(b"bad", writer.data)


class AddressTests(SynchronousTestCase):

    def test_helo(self):
        self.assertEqual(parse_helo(b"mail.example.com"), "mail.example.com")
        self.assertEqual(parse_helo(b"[192.0.2.1]"), "[192.0.2.1]")
        self.assertEqual(parse_helo(b"[IPv6:2001:db8::1]"), "[IPv6:2001:db8::1]")
        self.assertEqual(parse_helo(b"WIN_PC"), "WIN_PC")
        for bad in (b"", b"a.test\nX-Injected: yes", b"a b", b"<x>", b"[999.1.1.1]", b"caf\xc3\xa9.test", b"a..b"):
            self.assertIsNone(parse_helo(bad), bad)

    def test_mail_from(self):
        arg, problem = parse_mail_from(b"FROM:<a@b.test> SIZE=100 BODY=8BITMIME")
        self.assertIsNone(problem)
        self.assertEqual((arg.address, arg.params), ("a@b.test", {"SIZE": "100", "BODY": "8BITMIME"}))
        self.assertEqual(parse_mail_from(b"from: <>")[0].address, "")
        self.assertEqual(parse_mail_from(b"FROM:<@relay.test:a@b.test>")[0].address, "a@b.test")
        self.assertEqual(parse_mail_from(b'FROM:<"odd >name"@b.test>')[0].address, '"odd >name"@b.test')
        self.assertEqual(parse_mail_from(b"FROM:bare@b.test")[0].address, "bare@b.test")

    def test_mail_from_problems(self):
        self.assertEqual(parse_mail_from(b"TO:<a@b>")[1].code, 501)
        self.assertEqual(parse_mail_from(b"FROM:<a@b.test")[1].status, "5.5.4")
        self.assertEqual(parse_mail_from(b"FROM:<nodomain>")[1].status, "5.1.7")
        self.assertEqual(parse_mail_from(b"FROM:<j\xc3\xb6rg@b.test>")[1].status, "5.6.7")
        self.assertEqual(parse_mail_from(b"FROM:<a@b.test> SIZE=1 SIZE=2")[1].status, "5.5.4")
        self.assertEqual(parse_mail_from(b"FROM:<" + b"a" * 65 + b"@b.test>")[1].status, "5.1.7")

    def test_rcpt_to(self):
        self.assertEqual(parse_rcpt_to(b"TO:<User@Example.COM>")[0].address, "User@Example.COM")
        self.assertEqual(parse_rcpt_to(b"TO:<>")[1].status, "5.1.3")
        self.assertEqual(recipient_key("User@Example.COM"), "User@example.com")


class AuthExchangeTests(SynchronousTestCase):

    def test_plain_initial_response(self):
        step = AuthExchange("PLAIN").start(base64.b64encode(b"\x00alice\x00secret"))
        self.assertIsInstance(step, Ready)
        self.assertEqual((step.credentials.username, step.credentials.password), (b"alice", b"secret"))
        self.assertNotIn("secret", repr(step))

    def test_plain_challenge_then_response(self):
        exchange = AuthExchange("PLAIN")
        self.assertEqual(exchange.start(None), Challenge(b""))
        self.assertIsInstance(exchange.respond(base64.b64encode(b"alice\x00alice\x00pw")), Ready)

    def test_login(self):
        exchange = AuthExchange("LOGIN")
        self.assertEqual(exchange.start(None), Challenge(b"Username:"))
        self.assertEqual(exchange.respond(base64.b64encode(b"alice")), Challenge(b"Password:"))
        step = exchange.respond(base64.b64encode(b"pw"))
        self.assertEqual(step.credentials.username, b"alice")

    def test_malformed(self):
        self.assertEqual(AuthExchange("PLAIN").start(b"!!notbase64"), Refusal(501, "5.5.2", "Invalid base64 data"))
        self.assertEqual(AuthExchange("PLAIN").start(base64.b64encode(b"only\x00two")).code, 501)
        self.assertEqual(AuthExchange("PLAIN").start(base64.b64encode(b"a\x00b\x00c\x00d")).code, 501)
        self.assertEqual(AuthExchange("LOGIN").start(b"*"), CANCELLED)
        self.assertEqual(AuthExchange("LOGIN").start(b"="), Refusal(501, "5.5.2", "Invalid user name"))
