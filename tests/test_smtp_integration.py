"""
Integration tests of the SMTP intake on real loopback sockets: smtplib (in a thread), raw
sockets where exact bytes matter (pipelining, smuggling, STARTTLS injection), Twisted's own
ESMTP client, real TLS handshakes with the test CA, and the listener service (plain, implicit
TLS, PROXY protocol).  Messages land in a MemorySpool; the lead's end-to-end tests cover the
real spool.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from typing import Optional

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.mail.smtp import sendmail as twisted_sendmail
from twisted.trial.unittest import TestCase

from gateway.policy.interfaces import Continue, Reject
from gateway.smtp.listener import listener_service
from gateway.spool.interfaces import SpoolError
from gateway.testing.certs import TestCA
from gateway.testing.memory_spool import MemorySpool
from tests.smtp_helpers import (
    PASSWORD,
    ScriptedPolicy,
    make_factory,
    make_portal,
    tls_from_ca,
)
from tests.test_smtp_framing import FAKE_ENDS

LOOPBACK = "tcp:0:interface=127.0.0.1"


def converse(port: int, payload: bytes, context: Optional[ssl.SSLContext] = None) -> bytes:
    """Send ``payload`` in one write and read until the server closes (runs in a thread)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    received = b""
    try:
        try:
            sock.sendall(payload)
        except OSError:
            pass
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return received


def reply_codes(received: bytes) -> list[bytes]:
    """Final lines' codes (multi-line continuation lines skipped)."""
    return [line[:3] for line in received.split(b"\r\n") if line and line[3:4] != b"-"]


def session(*commands: bytes) -> bytes:
    return b"".join(c + b"\r\n" for c in commands)


class IntakeCase(TestCase):

    @inlineCallbacks
    def start(self, **kw):
        kw.setdefault("endpoint", LOOPBACK)
        factory = make_factory(clock=reactor, **kw)
        service = listener_service(reactor, factory.listener, factory)
        service.startService()
        port = yield service.when_listening()
        self.addCleanup(self.stop, service, factory)
        return factory, port.getHost().port

    @inlineCallbacks
    def stop(self, service, factory):
        yield service.stopService()
        # Wait for every server-side connectionLost, so no session timer is left behind.
        yield factory.all_closed().addTimeout(10, reactor)

    def client_context(self, ca: TestCA) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=ca.ca_cert_path)
        return context

    def make_ca(self) -> TestCA:
        return TestCA.create(self.mktemp())


class SmtplibTests(IntakeCase):

    @inlineCallbacks
    def test_single_and_multi_recipient_with_8bit_body(self):
        factory, port = yield self.start()
        # smtplib sends bytes unchanged (no LF → CRLF), so the test message has CRLF already.
        body = "Subject: Grüße\r\nFrom: a@sender.test\r\n\r\nZeile 1 ÄÖÜ\r\n.leading dot\r\n".encode("utf-8")

        def send():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
                smtp.sendmail("a@sender.test", ["one@rcpt.test"], body, mail_options=["BODY=8BITMIME"])
                smtp.sendmail("a@sender.test", ["one@rcpt.test", "two@rcpt.test", "three@rcpt.test"], body)
        yield deferToThread(send)
        yield factory.all_closed()
        self.assertEqual([e.envelope.recipients for e, _ in factory.spool.messages],
                         [("one@rcpt.test",), ("one@rcpt.test", "two@rcpt.test", "three@rcpt.test")])
        for entry, data in factory.spool.messages:
            self.assertEqual(entry.provenance.client_name, "client.test")
            self.assertEqual(entry.provenance.client_address, "127.0.0.1")
            self.assertTrue(data.endswith(body))
            self.assertTrue(data.startswith(b"Received: from client.test ([127.0.0.1])\r\n"))

    @inlineCallbacks
    def test_size_refused_at_mail_from(self):
        factory, port = yield self.start(limits={"max_message_size": 5000})

        def send():
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                try:
                    smtp.sendmail("a@sender.test", ["r@rcpt.test"], b"Subject: big\r\n\r\n" + b"x" * 6000)
                except smtplib.SMTPSenderRefused as e:
                    return e.smtp_code, e.smtp_error
        code, text = yield deferToThread(send)
        self.assertEqual((code, text), (552, b"5.3.4 Message size exceeds fixed maximum message size"))
        yield factory.all_closed()
        self.assertEqual(factory.spool.messages, [])

    @inlineCallbacks
    def test_recipient_limit(self):
        factory, port = yield self.start(limits={"max_recipients": 2})

        def send():
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                return smtp.sendmail("a@sender.test", ["r1@x.test", "r2@x.test", "r3@x.test"], b"Subject: s\r\n\r\nbody\r\n")
        refused = yield deferToThread(send)
        self.assertEqual(refused, {"r3@x.test": (452, b"4.5.3 Too many recipients")})
        yield factory.all_closed()
        [(entry, _)] = factory.spool.messages
        self.assertEqual(entry.envelope.recipients, ("r1@x.test", "r2@x.test"))

    @inlineCallbacks
    def test_spool_failure_is_transient(self):
        spool = MemorySpool(fail_with=SpoolError("No space left on device", out_of_space=True))
        factory, port = yield self.start(spool=spool)

        def send():
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                try:
                    smtp.sendmail("a@sender.test", ["r@x.test"], b"Subject: s\r\n\r\nbody\r\n")
                except smtplib.SMTPDataError as e:
                    return e.smtp_code, e.smtp_error
        result = yield deferToThread(send)
        self.assertEqual(result, (452, b"4.3.1 Insufficient system storage, try again later"))

    @inlineCallbacks
    def test_twisted_client(self):
        factory, port = yield self.start()
        yield twisted_sendmail("127.0.0.1", "a@sender.test", ["r@rcpt.test"], b"Subject: via twisted\n\nhello\n", port=port)
        yield factory.all_closed()
        [(entry, data)] = factory.spool.messages
        self.assertTrue(data.endswith(b"Subject: via twisted\r\n\r\nhello\r\n"))


class RawSocketTests(IntakeCase):

    @inlineCallbacks
    def test_pipelined_commands_with_async_verdicts_reply_in_order(self):
        def slow(verdict):
            return lambda session, arg: deferLater(reactor, 0.01, lambda: verdict)
        policy = ScriptedPolicy(
            on_connect=slow(Continue()), on_mail_from=slow(Continue()),
            on_rcpt_to=lambda session, rcpt: deferLater(reactor, 0.01, lambda: Reject(550, "5.1.1", "No such user") if rcpt.startswith("no") else Continue()),
            on_message=slow(Continue()),
        )
        factory, port = yield self.start(policies=(policy,))
        payload = session(
            b"EHLO client.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<r1@x.test>", b"RCPT TO:<nobody@x.test>",
            b"RCPT TO:<r2@x.test>", b"DATA", b"Subject: s\r\n\r\nbody\r\n.", b"NOOP", b"QUIT",
        )
        received = yield deferToThread(converse, port, payload)
        self.assertEqual(reply_codes(received), [b"220", b"250", b"250", b"250", b"550", b"250", b"354", b"250", b"250", b"221"])
        [(entry, _)] = factory.spool.messages
        self.assertEqual(entry.envelope.recipients, ("r1@x.test", "r2@x.test"))

    @inlineCallbacks
    def test_smuggling_variants_yield_no_smuggled_message(self):
        factory, port = yield self.start()
        smuggled = b"MAIL FROM:<ceo@sender.test>\r\nRCPT TO:<victim@rcpt.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        prefix = session(b"EHLO client.test", b"MAIL FROM:<legit@sender.test>", b"RCPT TO:<r@rcpt.test>", b"DATA")
        for fake in FAKE_ENDS:
            before = len(factory.spool.messages)
            payload = prefix + b"Subject: legit\r\n\r\nlegit body" + fake + smuggled + b"QUIT\r\n"
            received = yield deferToThread(converse, port, payload)
            self.assertIn(b"550 5.6.0", received, fake)
            self.assertLessEqual(len(factory.spool.messages) - before, 1, fake)
            for _, data in factory.spool.messages[before:]:
                self.assertNotIn(b"smuggled", data, fake)
        # Control: the real end of data gives two messages, as the client intended.
        received = yield deferToThread(converse, port, prefix + b"Subject: legit\r\n\r\nlegit body\r\n.\r\n" + smuggled + b"QUIT\r\n")
        self.assertEqual(received.count(b"250 2.0.0 Ok: queued as"), 2)
        self.assertEqual(len(factory.spool.messages), 2)

    @inlineCallbacks
    def test_long_line_in_data_closes_without_second_message(self):
        factory, port = yield self.start(limits={"max_data_line": 1000})
        payload = (
            session(b"EHLO client.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<r@x.test>", b"DATA")
            + b"Subject: s\r\n\r\n" + b"L" * 5000 + b"\r\n"
            + session(b"MAIL FROM:<ceo@b.test>", b"RCPT TO:<v@x.test>", b"DATA", b"smuggled", b".", b"QUIT")
        )
        received = yield deferToThread(converse, port, payload)
        self.assertTrue(received.endswith(b"500 5.5.2 Line too long\r\n"), received[-200:])
        yield factory.all_closed()
        self.assertEqual(factory.spool.messages, [])

    @inlineCallbacks
    def test_endless_line_closes_connection(self):
        factory, port = yield self.start(limits={"max_data_line": 1000, "max_command_line": 512})
        yield deferToThread(converse, port, b"EHLO " + b"x" * 100000)
        data_payload = session(b"EHLO client.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<r@x.test>", b"DATA") + b"y" * 100000
        received = yield deferToThread(converse, port, data_payload)
        self.assertNotIn(b"221", received)
        yield factory.all_closed()
        self.assertEqual(factory.opened, 2)
        self.assertEqual(factory.spool.messages, [])

    @inlineCallbacks
    def test_bare_lf_refused_then_session_continues(self):
        factory, port = yield self.start()
        payload = session(b"EHLO client.test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<r@x.test>", b"DATA") + (
            b"Subject: s\r\n\r\nline one\nline two\r\n.\r\n"
            + session(b"MAIL FROM:<a@b.test>", b"RCPT TO:<r@x.test>", b"DATA", b"Subject: ok", b"", b"fine", b".", b"QUIT")
        )
        received = yield deferToThread(converse, port, payload)
        self.assertIn(b"550 5.6.0", received)
        self.assertIn(b"250 2.0.0 Ok: queued as", received)
        [(_, data)] = factory.spool.messages
        self.assertTrue(data.endswith(b"Subject: ok\r\n\r\nfine\r\n"))

    @inlineCallbacks
    def test_proxy_protocol_address_is_used(self):
        policy = ScriptedPolicy()
        factory, port = yield self.start(policies=(policy,), endpoint="haproxy:" + LOOPBACK, proxy_protocol=True)
        payload = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n" + session(b"EHLO client.test", b"QUIT")
        received = yield deferToThread(converse, port, payload)
        self.assertEqual(reply_codes(received), [b"220", b"250", b"221"])
        [(step, view, _)] = policy.calls
        self.assertEqual((step, view.client_address, view.client_port), ("on_connect", "203.0.113.9", 40000))


class TLSTests(IntakeCase):

    @inlineCallbacks
    def start_tls(self, **kw):
        ca = self.make_ca()
        portal, _ = make_portal()
        factory, port = yield self.start(
            tls_source=tls_from_ca(ca), tls=kw.pop("tls", "starttls"), tls_cert="unused", portal=portal,
            auth="optional", **kw,
        )
        return factory, port, self.client_context(ca)

    @inlineCallbacks
    def test_starttls_then_auth_and_send(self):
        factory, port, context = yield self.start_tls()
        body = b"Subject: secure\r\n\r\nbody\r\n"

        def send():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
                smtp.ehlo()
                before = (smtp.has_extn("auth"), smtp.has_extn("starttls"))
                auth_reply = smtp.docmd("AUTH", "PLAIN AGFsaWNlAHM=")
                smtp.starttls(context=context)
                smtp.ehlo()
                after = (smtp.has_extn("auth"), smtp.has_extn("starttls"))
                smtp.login("alice", PASSWORD.decode())
                smtp.sendmail("a@sender.test", ["r@rcpt.test"], body)
                return before, auth_reply, after
        before, auth_reply, after = yield deferToThread(send)
        self.assertEqual(before, (False, True))
        self.assertEqual(auth_reply, (538, b"5.7.11 Encryption required for requested authentication mechanism"))
        self.assertEqual(after, (True, False))
        yield factory.all_closed()
        [(entry, data)] = factory.spool.messages
        self.assertTrue(entry.provenance.tls)
        self.assertEqual(entry.provenance.auth_identity, "alice")
        self.assertIn(b"with ESMTPSA id", data)

    @inlineCallbacks
    def test_state_reset_after_starttls(self):
        factory, port, context = yield self.start_tls()

        def talk():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
                smtp.ehlo()
                smtp.starttls(context=context)
                mail_without_ehlo = smtp.docmd("MAIL", "FROM:<a@b.test>")
                smtp.ehlo()
                again = smtp.docmd("STARTTLS")
                return mail_without_ehlo, again
        mail_without_ehlo, again = yield deferToThread(talk)
        self.assertEqual(mail_without_ehlo, (503, b"5.5.1 Send EHLO/HELO first"))
        self.assertEqual(again, (503, b"5.5.1 TLS already active"))

    @inlineCallbacks
    def test_starttls_injection_discarded(self):
        policy = ScriptedPolicy()
        factory, port, context = yield self.start_tls(policies=(policy,))
        payload = session(b"EHLO client.test", b"STARTTLS", b"MAIL FROM:<injected@evil.test>", b"RCPT TO:<r@x.test>")
        # The server aborts the connection (RST), so the client may not even see the 220.
        received = yield deferToThread(converse, port, payload)
        self.assertNotIn(b"2.1.0", received)
        yield factory.all_closed()
        self.assertEqual([step for step, _, _ in policy.calls], ["on_connect"])
        self.assertEqual(factory.spool.messages, [])

    @inlineCallbacks
    def test_implicit_tls_listener(self):
        factory, port, context = yield self.start_tls(tls="implicit")

        def send():
            with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", context=context) as smtp:
                smtp.ehlo()
                features = (smtp.has_extn("starttls"), smtp.has_extn("auth"))
                smtp.login("alice", PASSWORD.decode())
                smtp.sendmail("a@sender.test", ["r@rcpt.test"], b"Subject: implicit\r\n\r\nbody\r\n")
                return features
        features = yield deferToThread(send)
        self.assertEqual(features, (False, True))
        yield factory.all_closed()
        # Options are fetched per connection, so a reloaded certificate applies to the next client.
        self.assertEqual(factory.tls.asked, 1)
        [(entry, data)] = factory.spool.messages
        self.assertTrue(entry.provenance.tls)
        self.assertIn(b"tls=yes; authenticated", data)
