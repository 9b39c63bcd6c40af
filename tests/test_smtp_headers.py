"""
Header lines the SMTP layer writes (gateway.smtp.headers): edits rendered as given.

Header edits were once rendered by the ``email`` package's header factory, which
decodes RFC 2047 encoded words in the value it is given.  A value that *contains the text* of an
encoded word for CR LF (for example the subject tag policy's "[Scan] " + the client's decoded
Subject, where the client double-encoded it) came out as a real line break: header injection,
or even the end of the header section, in the bytes that are spooled and delivered.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.context import PolicyContext
from gateway.policy.header_rewrite import build
from gateway.policy.interfaces import HeaderEdit
from gateway.smtp.headers import apply_edits, header_line
from tests.smtp_helpers import Session, make_factory

ENCODED_BREAK = "=?utf-8?q?a=0D=0AX-Injected:_yes?="


def single_field(test: SynchronousTestCase, line: bytes) -> None:
    """``line`` is one header field: CRLF only as folds, nothing after the final CRLF."""
    test.assertTrue(line.endswith(b"\r\n"))
    body = line[:-2]
    test.assertNotIn(b"\n", body.replace(b"\r\n ", b"").replace(b"\r\n\t", b""))
    test.assertNotIn(b"\r", body.replace(b"\r\n ", b"").replace(b"\r\n\t", b""))


class HeaderLineTests(SynchronousTestCase):

    def test_encoded_word_text_cannot_break_the_line(self):
        for value in (
            "[Scan] " + ENCODED_BREAK, "=?utf-8?q?a=0AX-Injected:_yes?=", "=?utf-8?q?a=0DX-Injected:_yes?=",
            "=?utf-8?q?a=0D=0A=0D=0Abody?=",
        ):
            for name in ("Subject", "X-Custom"):
                line = header_line(name, value)
                single_field(self, line)
                self.assertTrue(line.startswith(name.encode() + b": "))

    def test_apply_edits_keeps_one_field_per_edit(self):
        result = apply_edits(b"Subject: x\r\nTo: a@b.test\r\n", [HeaderEdit("replace", "Subject", ENCODED_BREAK)])
        parsed = email.parser.BytesHeaderParser(policy=email.policy.SMTP).parsebytes(result + b"\r\n")
        self.assertEqual(sorted(parsed.keys()), ["Subject", "To"])

    def test_ordinary_values_unchanged(self):
        self.assertEqual(header_line("Subject", "[Scan] hello"), b"Subject: [Scan] hello\r\n")
        self.assertEqual(header_line("From", "Scanner <scanner@corp.example>"), b"From: Scanner <scanner@corp.example>\r\n")


class SubjectTagInjectionTests(SynchronousTestCase):

    def test_double_encoded_subject_cannot_inject_a_header(self):
        policy = build({"subject_tag": "[Scan]"}, PolicyContext(clock=Clock()))
        factory = make_factory(policies=(policy,), add_message_id=False)
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope("a@sender.test", "r@rcpt.test")
        s.cmd("DATA")
        subject = "=?utf-8?b?" + base64.b64encode(ENCODED_BREAK.encode()).decode() + "?="
        reply = s.send(f"Subject: {subject}\r\nFrom: a@sender.test\r\n\r\nbody\r\n.\r\n".encode())
        self.assertEqual(reply[-1][:9], b"250 2.0.0")
        [(_, data)] = factory.spool.messages
        headers = data[:data.index(b"\r\n\r\n") + 2]
        self.assertNotIn(b"\r\nX-Injected", headers)
