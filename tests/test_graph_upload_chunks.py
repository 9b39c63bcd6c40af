"""
Issue 10, upload chunk sizes: every PUT to an upload session carries exactly
``graph.upload_chunk_size`` bytes (the last one fewer), whatever the attachment's
Content-Transfer-Encoding.  The decoders used to hand back more than asked for, so a
3,276,800-byte setting produced 3,304,527-byte PUTs (and "4MB" ones over Graph's limit).
"""

from __future__ import annotations

import base64
import os
import quopri

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config.errors import ConfigError
from gateway.delivery.graph.body import (
    Base64Of,
    Concat,
    DecodedRange,
    FileRange,
    Literal,
    read_exactly,
)
from gateway.delivery.interfaces import Delivered
from tests.graph_helpers import simple_message, stub_rig
from tests.test_graph_config import base, parse

ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"
KIB320 = 320 * 1024


def _encode(data: bytes, encoding: str, line: int) -> bytes:
    if encoding == "base64":
        b64 = base64.b64encode(data)
        return b"\r\n".join(b64[i:i + line] for i in range(0, len(b64), line)) + b"\r\n"
    if encoding == "quoted-printable":
        return quopri.encodestring(data).replace(b"\n", b"\r\n")
    return data


class ChunkerPropertyTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(data=st.binary(min_size=0, max_size=40_000),
           encoding=st.sampled_from(["base64", "quoted-printable", "7bit"]),
           line=st.integers(min_value=4, max_value=200),
           size=st.integers(min_value=1, max_value=9_000))
    def test_chunks_are_exact_and_reassemble(self, data, encoding, line, size):
        if encoding == "7bit":
            data = data.replace(b"\r", b"").replace(b"\n", b"")
        encoded = _encode(data, encoding, line)
        path = os.path.join(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"xx" + encoded + b"yy")
        reader = DecodedRange(path, 2, 2 + len(encoded), encoding, 0).open()
        chunks = []
        try:
            while True:
                chunk = read_exactly(reader, size)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            reader.close()
        decoded = b"".join(chunks)
        if encoding != "quoted-printable":
            self.assertEqual(decoded, data)
        self.assertTrue(all(len(c) == size for c in chunks[:-1]), [len(c) for c in chunks])
        self.assertTrue(not chunks or 0 < len(chunks[-1]) <= size)


    @settings(max_examples=40, deadline=None)
    @given(data=st.binary(min_size=0, max_size=20_000), head=st.binary(max_size=50),
           sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=30))
    def test_every_reader_honours_read_n(self, data, head, sizes):
        path = self.mktemp()
        encoded = _encode(data, "base64", 76)
        with open(path, "wb") as f:
            f.write(encoded)
        sources = [
            (Base64Of(Concat((Literal(head), FileRange(path, 0, len(encoded))))),
             base64.b64encode(head + encoded)),
            (DecodedRange(path, 0, len(encoded), "base64", len(data)), data),
        ]
        for source, expected in sources:
            reader = source.open()
            out = []
            try:
                for n in sizes * 50:
                    chunk = reader.read(n)
                    self.assertLessEqual(len(chunk), n)
                    if not chunk:
                        break
                    out.append(chunk)
                else:
                    out.append(read_exactly(reader, len(expected)))
            finally:
                reader.close()
            self.assertEqual(b"".join(out), expected)


class ChunkSizeConfigTests(SynchronousTestCase):
    def test_multiple_of_320_kib_up_to_4_mib(self):
        self.assertEqual(parse(base(upload_chunk_size="3200KiB")).upload_chunk_size, 10 * KIB320)
        self.assertEqual(parse(base(upload_chunk_size="3840KiB")).upload_chunk_size, 12 * KIB320)
        self.assertEqual(parse(base(upload_chunk_size="320KiB")).upload_chunk_size, KIB320)
        for bad in ("4MB", "3MB", "4MiB", "4160KiB", "100KiB", "0"):
            e = self.assertRaises(ConfigError, parse, base(upload_chunk_size=bad))
            self.assertEqual(e.key, "graph.upload_chunk_size")
            self.assertIn("multiple of 320KiB", str(e))


class UploadPutSizeTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def _deliver_big(self, chunk_size):
        r = stub_rig(self, upload_chunk_size=chunk_size)
        m = simple_message(to=[BOB])
        big = os.urandom(9 * 1024 * 1024 + 12345)
        m.add_attachment(big, maintype="application", subtype="pdf", filename="scan.pdf")
        outcome = yield r.deliver(r.entry(m, ALICE, [BOB]))
        self.assertIsInstance(outcome, Delivered)
        self.assertEqual(r.server.sent[0].attachment("scan.pdf").data, big)
        sizes = [q.length for q in r.server.requests if q.operation == "upload"]
        self.assertEqual(sum(sizes), len(big))
        self.assertEqual(sizes[:-1], [chunk_size] * (len(sizes) - 1))
        self.assertTrue(0 < sizes[-1] <= chunk_size)

    def test_default_chunk_size_is_exact(self):
        return self._deliver_big(10 * KIB320)

    def test_largest_chunk_size_is_exact_and_under_4_mib(self):
        return self._deliver_big(12 * KIB320)
