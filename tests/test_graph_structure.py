"""
The streaming MIME scan of large messages (L{gateway.delivery.graph.structure}) on malformed
and unusual shapes: where each part's span and body are, which boundary line ends what.

Spans must be exact: the large path cuts attachments out by byte range, so a span one line off
leaves a broken skeleton or loses text.  Well-formed messages are covered in test_graph_body.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.structure import MAX_DEPTH, scan_structure


def scan(case: SynchronousTestCase, data: bytes):
    path = case.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return scan_structure(path, len(data))


def body(data: bytes, part) -> bytes:
    return data[part.body_start:part.body_end]


class StructureShapeTests(SynchronousTestCase):
    def test_preamble_parts_and_epilogue(self):
        data = (b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n"
                b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\none\r\n"
                b"--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nPDF\r\n"
                b"--b1--\r\nepilogue\r\n")
        root = scan(self, data)
        self.assertEqual([c.content_type for c in root.children], ["text/plain", "application/pdf"])
        text, pdf = root.children
        self.assertEqual((body(data, text), body(data, pdf)), (b"one", b"PDF"))
        self.assertEqual((pdf.filename, pdf.is_attachment, text.is_attachment), ("a.pdf", True, False))
        self.assertEqual(data[text.span_start:text.span_end], b"--b1\r\nContent-Type: text/plain\r\n\r\none\r\n")
        self.assertEqual((text.opening, pdf.opening), (b"--b1\r\n", b"--b1\r\n"))
        self.assertEqual((root.span_end, root.body_end), (len(data), len(data) - 2))

    def test_nested_multipart_without_its_closing_line_ends_at_the_outer_boundary(self):
        data = (b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
                b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
                b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
                b"--outer\r\nContent-Type: image/png\r\n\r\nPNG\r\n--outer--\r\n")
        root = scan(self, data)
        alternative, image = root.children
        self.assertEqual((alternative.content_type, image.content_type), ("multipart/alternative", "image/png"))
        self.assertEqual([body(data, c) for c in alternative.children], [b"plain"])
        self.assertEqual(alternative.span_end, image.span_start)
        self.assertEqual(body(data, image), b"PNG")
        self.assertEqual(image.depth, 1)

    def test_a_part_without_a_blank_line_ends_its_headers_at_the_boundary(self):
        data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                b"--b\r\nContent-Type: text/csv\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n")
        root = scan(self, data)
        csv, plain = root.children
        self.assertEqual((csv.content_type, csv.body_start, csv.body_end), ("text/csv", plain.span_start, plain.span_start))
        self.assertEqual(body(data, plain), b"x")

    def test_closing_line_straight_away_means_no_parts(self):
        data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\npreamble\r\n--b--\r\n"
        root = scan(self, data)
        self.assertEqual((root.children, root.span_end), ((), len(data)))

    def test_missing_closing_line_runs_to_the_end_of_the_file(self):
        data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nlast words"
        root = scan(self, data)
        (only,) = root.children
        self.assertEqual((body(data, only), only.span_end), (b"last words", len(data)))

    def test_encoded_file_names_and_content_ids_are_decoded(self):
        data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                b"--b\r\nContent-Type: image/png; name=\"=?utf-8?q?caf=C3=A9.png?=\"\r\nContent-ID: <logo@x>\r\n\r\nPNG\r\n"
                b"--b\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"
                b"Content-Transfer-Encoding: BASE64 \r\n\r\nAAAA\r\n--b--\r\n")
        image, resume = scan(self, data).children
        self.assertEqual((image.filename, image.content_id, image.is_inline), ("café.png", "logo@x", True))
        self.assertEqual((resume.filename, resume.encoding), ("résumé.pdf", "base64"))

    def test_nesting_deeper_than_the_limit_is_one_leaf(self):
        depth = MAX_DEPTH + 3
        head = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(depth))
        data = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + head + b"deep\r\n"
        root = scan(self, data)
        deepest = max(root.walk(), key=lambda p: p.depth)
        self.assertEqual(deepest.depth, MAX_DEPTH)
        self.assertEqual(deepest.children, ())
        self.assertEqual(deepest.span_end, len(data))
