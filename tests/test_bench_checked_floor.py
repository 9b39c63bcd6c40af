"""
``bench/checked_floor.py`` (``compare_postfix.py --lean-checks``): the floor that does
graphsmtp's checks of each message without its session.  Its figure means what the record says
only if the checks really run: what graphsmtp refuses it refuses with graphsmtp's codes, what it
stores carries graphsmtp's Received line, and no refused or broken message stays behind.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from gateway.testing.memory_spool import MemorySpool
from tests.bench_modules import load_bench

checked_floor = load_bench("checked_floor")

ENVELOPE = b"HELO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<r@rcpt.test>\r\nDATA\r\n"


class LaterCommits:
    """A spool whose commits answer only when the test says (as the commit child does)."""

    def __init__(self) -> None:
        self.spool = MemorySpool()
        self.answers: list[tuple[Deferred, Deferred]] = []

    def open_writer(self) -> Deferred:
        d = self.spool.open_writer()
        d.addCallback(self._delayed)
        return d

    def _delayed(self, writer: Any) -> Any:
        answers = self.answers

        class Writer:
            def __getattr__(self, name: str) -> Any:
                return getattr(writer, name)

            def commit(self, *args: Any, **kwargs: Any) -> Deferred:
                answer: Deferred = Deferred()
                answers.append((writer.commit(*args, **kwargs), answer))
                return answer

        return Writer()

    def answer(self) -> None:
        done, answer = self.answers.pop(0)
        done.chainDeferred(answer)


class CheckedSMTPTests(TestCase):
    def setUp(self) -> None:
        self.spool = MemorySpool()
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def connect(self, spool: Any = None, client: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        factory = checked_floor.CheckedFactory(SimpleNamespace(spool=spool or self.spool))
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", client, 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def session(self, data: bytes, client: str = "127.0.0.1") -> bytes:
        protocol, transport = self.connect(client=client)
        protocol.dataReceived(data)
        return transport.value()

    def received_lines(self) -> list[dict]:
        return [e for e in self.logged if str(e.get("log_format", "")).startswith("received ")]

    def test_stores_with_graphsmtps_received_line_and_logs_it(self) -> None:
        """The message after its Received line, dots undone, the envelope as sent; one log line."""
        replies = self.session(ENVELOPE + b"From: a@sender.test\r\nMessage-ID: <1@x>\r\n"
                               b"Date: Tue, 1 Dec 2026 05:00:00 +0000\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
        [(entry, data)] = self.spool.messages
        self.assertEqual(replies.split(b"\r\n")[:6], [
            b"220 lean ESMTP", b"250 ok", b"250 2.1.0 Sender ok", b"250 2.1.5 Recipient ok",
            b"354 End data with <CR><LF>.<CR><LF>", b"250 2.0.0 Ok: queued as " + entry.queue_id.encode()])
        self.assertTrue(replies.endswith(b"221 bye\r\n"))
        self.assertTrue(data.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby bench.localdomain (graphsmtp)"))
        self.assertTrue(data.endswith(b"\r\nFrom: a@sender.test\r\nMessage-ID: <1@x>\r\n"
                                      b"Date: Tue, 1 Dec 2026 05:00:00 +0000\r\n\r\n.dot\r\n"))
        self.assertEqual((entry.envelope.sender, entry.envelope.recipients, entry.sending_mailbox),
                         ("a@sender.test", ("r@rcpt.test",), "a@sender.test"))
        [line] = self.received_lines()
        self.assertEqual((line["queue_id"], line["from"], line["to"]), (entry.queue_id, "a@sender.test", ["r@rcpt.test"]))

    def test_the_log_line_names_its_own_message_when_the_next_is_pipelined(self) -> None:
        """The commit answers later; the next transaction, pipelined, does not change the first's line."""
        spool = LaterCommits()
        protocol, transport = self.connect(spool=spool)
        protocol.dataReceived(ENVELOPE + b"From: a@sender.test\r\n\r\nbody\r\n.\r\n"
                              b"MAIL FROM:<second@sender.test>\r\nRCPT TO:<r2@rcpt.test>\r\n")
        self.assertNotIn(b"queued", transport.value())  # no 250 before the commit
        spool.answer()
        [line] = self.received_lines()
        self.assertEqual((line["from"], line["to"]), ("a@sender.test", ["r@rcpt.test"]))
        self.assertTrue(transport.value().endswith(b"250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n"))

    def test_the_mail_grammar_refuses(self) -> None:
        """Two From fields: refused after the final dot with graphsmtp's code, the message discarded."""
        replies = self.session(ENVELOPE + b"From: a@sender.test\r\nFrom: b@sender.test\r\n\r\nbody\r\n.\r\n")
        self.assertTrue(replies.endswith(b"550 5.6.0 Message refused: more than one From header field\r\n"), replies)
        self.assertEqual(self.spool.messages, [])
        self.assertTrue(self.spool.writers[0].aborted)

    def test_the_framing_checks_refuse(self) -> None:
        """A bare LF in the data: 550 5.6.0, the message discarded."""
        replies = self.session(ENVELOPE + b"From: a@sender.test\r\n\r\nbare\nlf\r\n.\r\n")
        self.assertIn(b"550 5.6.0 Message contains bare CR or LF characters", replies)
        self.assertEqual(self.spool.messages, [])
        self.assertTrue(self.spool.writers[0].aborted)

    def test_no_mailbox_to_send_as(self) -> None:
        """The null reverse-path and no From header: graphsmtp has no mailbox to send through (550)."""
        replies = self.session(b"HELO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<r@rcpt.test>\r\nDATA\r\nSubject: x\r\n\r\nb\r\n.\r\n")
        self.assertIn(b"550 5.6.0 Message refused: no From header", replies)
        self.assertEqual(self.spool.messages, [])

    def test_the_order_of_the_transaction(self) -> None:
        """DATA without MAIL, RCPT without MAIL, DATA without a recipient, a nested MAIL: refused."""
        replies = self.session(b"HELO c.test\r\nDATA\r\nRCPT TO:<r@rcpt.test>\r\nMAIL FROM:<a@sender.test>\r\n"
                               b"DATA\r\nMAIL FROM:<b@sender.test>\r\n")
        self.assertEqual(replies.split(b"\r\n")[2:7], [
            b"503 5.5.1 Need MAIL command", b"503 5.5.1 Need MAIL before RCPT", b"250 2.1.0 Sender ok",
            b"554 5.5.1 No valid recipients", b"503 5.5.1 Nested MAIL command"])
        self.assertEqual(self.spool.writers, [])

    def test_a_refused_sender_opens_no_transaction(self) -> None:
        """After a refused MAIL, RCPT and DATA are out of order, as in graphsmtp."""
        replies = self.session(b"HELO c.test\r\nMAIL FROM:<no-domain>\r\nRCPT TO:<r@rcpt.test>\r\nDATA\r\n")
        self.assertEqual(replies.split(b"\r\n")[2:5], [
            b"501 5.1.7 Address must be local-part@domain", b"503 5.5.1 Need MAIL before RCPT",
            b"503 5.5.1 Need MAIL command"])

    def test_arguments_are_checked(self) -> None:
        """A bad HELO name, an unknown MAIL parameter, a RCPT parameter: graphsmtp's refusals."""
        replies = self.session(b"HELO bad name\r\nHELO c.test\r\nMAIL FROM:<a@sender.test> FOO=1\r\n"
                               b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<r@rcpt.test> NOTIFY=NEVER\r\n")
        self.assertEqual(replies.split(b"\r\n")[1:6], [
            b"501 5.5.4 Invalid domain name", b"250 ok", b"555 5.5.4 Unsupported MAIL parameter FOO",
            b"250 2.1.0 Sender ok", b"555 5.5.4 Unsupported RCPT parameter NOTIFY"])

    def test_the_relay_guard_is_asked(self) -> None:
        """A client outside the trusted networks is refused at MAIL by graphsmtp's relay guard."""
        replies = self.session(b"HELO c.test\r\nMAIL FROM:<a@sender.test>\r\n", client="192.0.2.10")
        self.assertTrue(replies.endswith(b"554 5.7.1 Relay access denied\r\n"), replies)

    def test_a_line_too_long_discards_the_message(self) -> None:
        """The transport bound: 500 and the connection closed, the writer aborted."""
        protocol, transport = self.connect()
        protocol.dataReceived(ENVELOPE + b"x" * 70000)
        self.assertTrue(transport.value().endswith(b"500 5.5.2 Line too long\r\n"))
        self.assertTrue(transport.disconnecting)
        self.assertTrue(self.spool.writers[0].aborted)

    def test_a_client_gone_during_data_leaves_nothing(self) -> None:
        """The connection lost in the middle of the data: the writer is aborted, nothing stored."""
        protocol, transport = self.connect()
        protocol.dataReceived(ENVELOPE + b"From: a@sender.test\r\n\r\nhalf a mess")
        protocol.connectionLost(None)
        self.assertTrue(self.spool.writers[0].aborted)
        self.assertEqual(self.spool.messages, [])
