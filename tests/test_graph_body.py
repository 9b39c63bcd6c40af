"""Streamed request bodies and the MIME structure scan used by the large-message path."""

from __future__ import annotations

import base64
import email
import email.policy
import os
import quopri
from email.message import EmailMessage

from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.body import (
    Base64Of,
    Concat,
    DecodedRange,
    FileRange,
    Literal,
    StreamingBodyProducer,
    base64_length,
    decoded_length,
    read_exactly,
)
from gateway.delivery.graph.mime import read_header_section
from gateway.delivery.graph.structure import plan_extraction, scan_structure


def write(testcase, data: bytes) -> str:
    path = testcase.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return path


def drain(source, n: int = 7777) -> bytes:
    reader = source.open()
    try:
        out = []
        while True:
            chunk = reader.read(n)
            if not chunk:
                return b"".join(out)
            out.append(chunk)
    finally:
        reader.close()


class SourceTests(SynchronousTestCase):
    def test_base64_of_odd_sized_pieces_equals_base64_of_the_whole(self):
        data = os.urandom(200_001)
        path = write(self, data)
        # Pieces whose sizes are not multiples of 3 must not cause padding mid-stream.
        source = Base64Of(Concat((Literal(b"ab"), FileRange(path, 0, 100_000), FileRange(path, 100_000, 200_001))))
        expected = base64.b64encode(b"ab" + data)
        self.assertEqual(source.length, len(expected))
        for n in (4, 10, 65536):
            self.assertEqual(drain(source, n), expected)
        self.assertEqual(base64_length(0), 0)
        self.assertEqual(base64_length(4), 8)

    def test_decoders(self):
        payload = os.urandom(50_000) + b"=\r\n"
        b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
        path = write(self, b"junk" + b64 + b"junk")
        n = decoded_length(path, 4, 4 + len(b64), "base64")
        self.assertEqual(n, len(payload))
        self.assertEqual(drain(DecodedRange(path, 4, 4 + len(b64), "base64", n), 1000), payload)
        text = ("Grüße " * 3000 + "\r\nline two = ok\r\n").encode("utf-8")
        qp = quopri.encodestring(text.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
        path = write(self, qp)
        decoded = drain(DecodedRange(path, 0, len(qp), "quoted-printable", 0), 100)
        self.assertEqual(decoded.replace(b"\r\n", b"\n"), text.replace(b"\r\n", b"\n"))
        self.assertEqual(decoded_length(path, 0, len(qp), "quoted-printable"), len(decoded))
        self.assertEqual(drain(DecodedRange(path, 0, 10, "7bit", 10)), qp[:10])

    def test_read_exactly_spans_short_reads(self):
        reader = Concat((Literal(b"abc"), Literal(b"defg"))).open()
        self.assertEqual(read_exactly(reader, 5), b"abcde")
        self.assertEqual(read_exactly(reader, 5), b"fg")


class ProducerTests(SynchronousTestCase):
    def setUp(self):
        # One slice per step, run by hand, so the test can pause in the middle of a body.
        self.pending = []
        self.cooperator = Cooperator(terminationPredicateFactory=lambda: (lambda: True),
                                     scheduler=self.schedule, started=True)

    def schedule(self, f):
        self.pending.append(f)
        return Clock().callLater(0, lambda: None)

    def step(self):
        if self.pending:
            self.pending.pop(0)()

    def run_until_idle(self):
        for _ in range(10000):
            if not self.pending:
                return
            self.step()

    def test_streams_whole_body_with_exact_length_and_marks_finished(self):
        data = os.urandom(300_000)
        path = write(self, data)
        producer = StreamingBodyProducer(Base64Of(FileRange(path, 0, len(data))), self.cooperator, read_size=65536)
        self.assertEqual(producer.length, base64_length(len(data)))
        consumer = StringTransport()
        d = producer.startProducing(consumer)
        self.assertFalse(producer.finished)
        self.run_until_idle()
        self.successResultOf(d)
        self.assertTrue(producer.finished)
        self.assertEqual(consumer.value(), base64.b64encode(data))

    def test_small_body_is_written_with_the_headers_not_on_a_later_turn(self):
        # A body of one slice or less goes out in startProducing itself, as one write: no
        # Cooperator step (a reactor turn) stands between the request's headers and its body.
        data = os.urandom(30_000)
        path = write(self, data)
        source = Concat((Literal(b"X-Rewritten: yes\r\n"), FileRange(path, 0, len(data))))
        producer = StreamingBodyProducer(Base64Of(source), self.cooperator, read_size=65536)
        consumer = StringTransport()
        writes = []
        consumer.write = lambda chunk: (writes.append(chunk), StringTransport.write(consumer, chunk))
        d = producer.startProducing(consumer)
        self.assertEqual(self.pending, [])
        self.successResultOf(d)
        self.assertTrue(producer.finished)
        self.assertEqual(writes, [base64.b64encode(b"X-Rewritten: yes\r\n" + data)])
        self.assertEqual(producer.length, len(writes[0]))

    def test_small_body_that_cannot_be_read_fails_the_request_unsent(self):
        class Unreadable:
            length = 100

            def open(self):
                return self

            def read(self, n):
                raise OSError(5, "Input/output error")

            def close(self):
                closed.append(True)

        closed = []
        producer = StreamingBodyProducer(Unreadable(), self.cooperator)
        consumer = StringTransport()
        self.failureResultOf(producer.startProducing(consumer), OSError)
        self.assertFalse(producer.finished)
        self.assertEqual(consumer.value(), b"")
        self.assertEqual(closed, [True])

    def test_pause_holds_and_stop_never_fires(self):
        data = os.urandom(1_000_000)
        path = write(self, data)
        producer = StreamingBodyProducer(FileRange(path, 0, len(data)), self.cooperator, read_size=65536)
        consumer = StringTransport()
        d = producer.startProducing(consumer)
        self.step()
        self.step()
        producer.pauseProducing()
        written = len(consumer.value())
        self.run_until_idle()
        self.assertEqual(len(consumer.value()), written)
        self.assertLess(written, len(data))
        producer.resumeProducing()
        self.step()
        self.assertGreater(len(consumer.value()), written)
        producer.stopProducing()
        self.run_until_idle()
        self.assertNoResult(d)
        self.assertFalse(producer.finished)


class StructureTests(SynchronousTestCase):
    def message(self, attachment_size: int) -> tuple[bytes, bytes]:
        m = EmailMessage()
        m["From"] = "alice@contoso.test"
        m["To"] = "bob@fabrikam.test"
        m["Subject"] = "scan"
        m.set_content("text part\n")
        m.add_alternative("<p>html <img src='cid:logo'></p>", subtype="html")
        m.get_payload()[1].add_related(b"\x89PNG fake image", maintype="image", subtype="png", cid="<logo>")
        big = os.urandom(attachment_size)
        m.add_attachment(big, maintype="application", subtype="pdf", filename="scan.pdf")
        m.add_attachment(b"tiny", maintype="text", subtype="csv", filename="data.csv")
        return m.as_bytes(policy=email.policy.SMTP), big

    def test_scan_finds_parts_and_extraction_keeps_a_valid_skeleton(self):
        data, big = self.message(600_000)
        path = write(self, data)
        root = scan_structure(path, len(data))
        leaves = [p for p in root.walk() if not p.children]
        self.assertEqual([p.content_type for p in leaves], ["text/plain", "text/html", "image/png", "application/pdf", "text/csv"])
        pdf = leaves[3]
        self.assertEqual((pdf.filename, pdf.encoding, pdf.is_attachment), ("scan.pdf", "base64", True))
        image = leaves[2]
        self.assertEqual((image.content_id, image.is_inline, image.is_attachment), ("logo", True, True))
        self.assertFalse(leaves[0].is_attachment)

        section = read_header_section(path)
        extraction = plan_extraction(root, path, section.raw, section.body_offset, len(data), 100_000)
        self.assertEqual([p.filename for p in extraction.attachments], ["scan.pdf"])
        skeleton = drain(extraction.skeleton)
        self.assertLessEqual(base64_length(len(skeleton)), 100_000)
        parsed = email.message_from_bytes(skeleton, policy=email.policy.default)
        self.assertEqual(parsed["Subject"], "scan")
        self.assertEqual([p.get_content_type() for p in parsed.walk() if not p.is_multipart()],
                         ["text/plain", "text/html", "image/png", "text/csv"])
        self.assertEqual(parsed.defects, [])
        n = decoded_length(path, pdf.body_start, pdf.body_end, pdf.encoding)
        self.assertEqual(drain(DecodedRange(path, pdf.body_start, pdf.body_end, pdf.encoding, n)), big)

    def test_multipart_left_empty_gets_a_placeholder_part(self):
        m = EmailMessage()
        m["From"] = "a@b.test"
        m["To"] = "c@d.test"
        m.make_mixed()
        m.add_attachment(os.urandom(200_000), maintype="application", subtype="octet-stream", filename="x.bin")
        data = m.as_bytes(policy=email.policy.SMTP)
        path = write(self, data)
        root = scan_structure(path, len(data))
        section = read_header_section(path)
        extraction = plan_extraction(root, path, section.raw, section.body_offset, len(data), 10_000)
        parsed = email.message_from_bytes(drain(extraction.skeleton), policy=email.policy.default)
        self.assertEqual([p.get_content_type() for p in parsed.walk()], ["multipart/mixed", "text/plain"])

    def test_too_big_without_attachments_is_none(self):
        data, _ = self.message(10)
        path = write(self, data)
        root = scan_structure(path, len(data))
        section = read_header_section(path)
        self.assertIsNone(plan_extraction(root, path, section.raw, section.body_offset, len(data), 200))
