"""
NUL octets and lines over 998 characters in a message (issue 8, finding 8).  RFC 5322 §2.1.1
and §2.3 allow neither, and the next hop (Exchange) would have to guess what to do with them,
so the gateway refuses the message with ``550 5.6.0`` naming the problem: only after the client's
final dot, with nothing spooled, and the session goes on.
"""

from __future__ import annotations

import smtplib

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.model import Limits
from gateway.smtp.intake import LINE_OVER_998, NUL_OCTET, MessageIntake
from tests.smtp_helpers import Session, make_factory
from tests.test_smtp_integration import IntakeCase


class _Writer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def intake() -> tuple[_Writer, MessageIntake]:
    writer = _Writer()
    return writer, MessageIntake(writer, Limits(), lambda names: (b"Received: x\r\n", b""))


class IntakeBodyLimitTests(SynchronousTestCase):

    def test_nul_refused_and_nothing_more_written(self):
        writer, i = intake()
        i.feed(b"Subject: s\r\n\r\nok\r\n")
        self.assertEqual(i.feed(b"a\x00b\r\nafter\r\n.\r\n"), b"")
        self.assertEqual(i.refusal, NUL_OCTET)
        self.assertNotIn(b"\x00", writer.data)
        self.assertNotIn(b"after", writer.data)

    def test_nul_in_header_refused(self):
        _, i = intake()
        i.feed(b"Subject: a\x00b\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(i.refusal, NUL_OCTET)

    def test_line_of_998_accepted_999_refused(self):
        _, i = intake()
        i.feed(b"Subject: s\r\n\r\n" + b"a" * 998 + b"\r\n.\r\n")
        self.assertIsNone(i.refusal)
        writer, i = intake()
        i.feed(b"Subject: s\r\n\r\n" + b"a" * 999 + b"\r\n.\r\n")
        self.assertEqual(i.refusal, LINE_OVER_998)
        self.assertNotIn(b"a" * 999, writer.data)

    def test_dot_stuffing_does_not_count(self):
        """A 998-character line starting with a dot is 999 octets on the wire, 998 in the message."""
        _, i = intake()
        i.feed(b"Subject: s\r\n\r\n." + b"." + b"b" * 997 + b"\r\n.\r\n")
        self.assertIsNone(i.refusal)

    def test_long_header_line_refused(self):
        _, i = intake()
        i.feed(b"X-Long: " + b"h" * 991 + b"\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(i.refusal, LINE_OVER_998)

    def test_refusal_texts_name_the_problem(self):
        self.assertEqual((NUL_OCTET.code, NUL_OCTET.status), (550, "5.6.0"))
        self.assertIn("NUL", NUL_OCTET.text)
        self.assertEqual((LINE_OVER_998.code, LINE_OVER_998.status), (550, "5.6.0"))
        self.assertIn("998", LINE_OVER_998.text)


class SessionBodyLimitTests(SynchronousTestCase):

    def session(self) -> Session:
        factory = make_factory(clock=Clock(), add_message_id=False)
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        return s

    def check_refused_then_usable(self, body: bytes, expected: bytes) -> None:
        s = self.session()
        s.envelope()
        self.assertTrue(s.cmd("DATA").startswith(b"354 "))
        # The problem is seen here already, but nothing is said before the final dot.
        self.assertEqual(s.send(b"Subject: s\r\n\r\n" + body + b"more body\r\n"), [])
        self.assertEqual(s.send(b".\r\n"), [expected])
        self.assertEqual(s.factory.spool.messages, [])
        self.assertFalse(s.closed)
        # The session goes on: the next message is accepted.
        s.envelope()
        s.cmd("DATA")
        self.assertTrue(s.send(b"Subject: fine\r\n\r\nfine\r\n.\r\n")[0].startswith(b"250 2.0.0 Ok: queued as"))
        [(_, data)] = s.factory.spool.messages
        self.assertTrue(data.endswith(b"Subject: fine\r\n\r\nfine\r\n"))

    def test_nul_refused_after_final_dot(self):
        self.check_refused_then_usable(b"nul \x00 here\r\n", b"550 5.6.0 Message contains NUL characters, which RFC 5322 does not allow")

    def test_line_over_998_refused_after_final_dot(self):
        self.check_refused_then_usable(
            b"x" * 999 + b"\r\n", b"550 5.6.0 Message contains a line longer than 998 characters (RFC 5322 section 2.1.1)",
        )


class BodyLimitLoopbackTests(IntakeCase):

    @inlineCallbacks
    def test_smtplib_client_refused_then_sends_again(self):
        factory, port = yield self.start(add_message_id=False)

        def send():
            codes = []
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
                for body in (b"a\x00b\r\n", b"y" * 1500 + b"\r\n", b"z" * 998 + b"\r\n"):
                    try:
                        smtp.sendmail("a@sender.test", ["r@rcpt.test"], b"Subject: t\r\n\r\n" + body)
                        codes.append((250, b""))
                    except smtplib.SMTPDataError as e:
                        codes.append((e.smtp_code, e.smtp_error))
            return codes
        codes = yield deferToThread(send)
        self.assertEqual(codes[0][0], 550)
        self.assertIn(b"5.6.0 Message contains NUL", codes[0][1])
        self.assertEqual(codes[1][0], 550)
        self.assertIn(b"5.6.0 Message contains a line longer than 998", codes[1][1])
        self.assertEqual(codes[2], (250, b""))
        yield factory.all_closed()
        [(_, data)] = factory.spool.messages
        self.assertTrue(data.endswith(b"z" * 998 + b"\r\n"))
