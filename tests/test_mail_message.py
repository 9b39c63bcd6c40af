"""gateway.mail.fields, gateway.mail.message and gateway.mail.patterns: header sections judged once."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.mail.errors import LimitExceeded, MailRefusal, MalformedHeader
from gateway.mail.fields import (
    Field,
    TooManyFields,
    apply_edits,
    field_name,
    header_line,
    is_continuation,
    is_from_line,
    split_fields,
)
from gateway.mail.limits import DEFAULT_LIMITS, MailLimits
from gateway.mail.message import (
    ADDRESS_FIELDS,
    IDENTITY_FIELDS,
    SINGLE_FIELDS,
    choose_sending_mailbox,
    display_name_of,
    parse_header_section,
)
from gateway.mail.patterns import (
    ANY_SENDER,
    PatternError,
    SenderPattern,
    matches_any,
    parse_patterns,
)
from gateway.policy.interfaces import HeaderEdit


class FieldTests(SynchronousTestCase):
    def test_field_lines(self):
        self.assertEqual(field_name(b"From: x"), (b"From", False))
        self.assertEqual(field_name(b"From : x"), (b"From", True))
        self.assertEqual(field_name(b"From\t: x"), (b"From", True))
        self.assertEqual(field_name(b"X-A:"), (b"X-A", False))
        self.assertEqual(field_name(b"~!:"), (b"~!", False))
        self.assertIsNone(field_name(b": x"))
        self.assertIsNone(field_name(b" From: x"))
        self.assertIsNone(field_name(b"From x"))
        self.assertIsNone(field_name(b"Fr\x80om: x"))
        self.assertIsNone(field_name(b"From: x", 0, 3))
        self.assertEqual(field_name(b"xxFrom: y", 2), (b"From", False))

    def test_continuations_and_from_lines(self):
        self.assertTrue(is_continuation(b" x"))
        self.assertTrue(is_continuation(b"\tx"))
        self.assertFalse(is_continuation(b"x"))
        self.assertFalse(is_continuation(b""))
        self.assertTrue(is_from_line(b"From ceo@corp.example Mon Jan  1 00:00:00 2024"))
        self.assertTrue(is_from_line(b"from x"))
        self.assertFalse(is_from_line(b"From : x"))
        self.assertFalse(is_from_line(b"From: x"))
        self.assertFalse(is_from_line(b"Fromage: x"))
        self.assertFalse(is_from_line(b""))

    def test_split(self):
        fields = split_fields(b"A: 1\r\n  more\r\nB : 2\r\nnot a field\r\n\tcont\r\n")
        self.assertEqual([(f.name, f.raw, f.obsolete_space) for f in fields], [
            (b"A", b"A: 1\r\n  more\r\n", False), (b"B", b"B : 2\r\n", True), (b"", b"not a field\r\n\tcont\r\n", False),
        ])
        self.assertEqual(fields[0].value, b" 1  more")
        self.assertEqual(fields[0].text, "1  more")
        self.assertEqual(fields[0].lname, "a")
        self.assertEqual(split_fields(b""), [])
        self.assertEqual(split_fields(b" lone\r\n")[0].name, b"")
        self.assertEqual(len(split_fields(b"A: 1\r\nB: 2\r\n", 2)), 2)
        self.assertRaises(TooManyFields, split_fields, b"A: 1\r\nB: 2\r\nC: 3\r\n", 2)
        self.assertEqual(split_fields(b"A: 1\r\nB: 2")[1].raw, b"B: 2\r\n")
        self.assertEqual(Field(b"S", b"S: x\xff\r\n").text, "x\ufffd")

    def test_header_line_is_one_field(self):
        self.assertEqual(header_line("Subject", "hi"), b"Subject: hi\r\n")
        line = header_line("Subject", "=?utf-8?q?a=0D=0Ab?= x\r\nBcc: y")
        self.assertTrue(line.endswith(b"\r\n"))
        self.assertEqual(len(split_fields(line)), 1, line)
        self.assertTrue(all(part[:1] in (b" ", b"\t") for part in line.split(b"\r\n")[1:-1]), line)
        self.assertNotIn(b"\x00", header_line("X", "a\x00b"))
        self.assertEqual(header_line("From", '"Doe, John" <j@x.example>'), b'From: "Doe, John" <j@x.example>\r\n')

    def test_apply_edits(self):
        lines = b"A: 1\r\nB: 2\r\nA: 3\r\n"
        self.assertEqual(apply_edits(lines, [HeaderEdit("remove", "a")]), b"B: 2\r\n")
        self.assertEqual(apply_edits(lines, [HeaderEdit("replace", "A", "9")]), b"A: 9\r\nB: 2\r\n")
        self.assertEqual(apply_edits(lines, [HeaderEdit("replace", "C", "9")]), lines + b"C: 9\r\n")
        self.assertEqual(apply_edits(lines, [HeaderEdit("add", "A", "4")]), lines + b"A: 4\r\n")
        self.assertEqual(apply_edits(lines, [HeaderEdit("replace", "B", None)]), b"A: 1\r\nB:\r\nA: 3\r\n")
        self.assertEqual(apply_edits(lines, []), lines)


HEADER = b"Received: from x\r\n\tby y\r\nFrom: Alice <Alice@Corp.Example>\r\nTo: b@x.example\r\nSubject: s\r\n"


class MessageTests(SynchronousTestCase):
    def assertRefused(self, section, fragment, kind=MalformedHeader, **kwargs):
        e = self.assertRaises(MailRefusal, parse_header_section, section, **kwargs)
        self.assertIsInstance(e, kind)
        self.assertIn(fragment, e.text)
        self.assertEqual((e.code, e.status), (552, "5.3.4") if kind is LimitExceeded else (550, "5.6.0"))
        return e

    def test_a_plain_section(self):
        judged = parse_header_section(HEADER + b"\r\nbody\r\nFrom : x\r\n")
        self.assertEqual(judged.raw, HEADER)
        self.assertEqual([f.lname for f in judged.fields], ["received", "from", "to", "subject"])
        self.assertEqual(judged.get("subject"), "s")
        self.assertEqual(judged.get("Subject"), "s")
        self.assertIsNone(judged.get("x-none"))
        self.assertEqual(judged.get_all("TO"), ["b@x.example"])
        self.assertTrue(judged.has("FROM"))
        self.assertFalse(judged.has("sender"))
        self.assertEqual(judged.header_sender().address, "Alice@Corp.Example")
        self.assertEqual(judged.mailboxes("to")[0].address, "b@x.example")
        self.assertEqual(judged.mailboxes("cc"), ())
        self.assertEqual(judged.identity_mailboxes(), [("From", judged.mailboxes("from")[0])])
        self.assertEqual(parse_header_section(b"\r\nbody").fields, ())
        self.assertEqual(parse_header_section(b"").fields, ())
        self.assertEqual(parse_header_section(b"A: b").raw, b"A: b\r\n")
        self.assertEqual(parse_header_section(b"A: b\r\n").raw, b"A: b\r\n")

    def test_ambiguities_are_refused(self):
        self.assertRefused(b"To: x@y.example\r\nFrom : CEO <ceo@corp.example>\r\n", "white space before the colon in the From header field")
        self.assertRefused(b"Subject\t: x\r\n", "white space before the colon in the Subject header field")
        self.assertRefused(b"From: a@b.example\r\nFrom ceo@corp.example Mon Jan 1\r\n", 'an mbox "From " line')
        self.assertRefused(b"From: a@b.example\r\nnot a field\r\n", "not a header field")
        self.assertRefused(b"From: a@b.example\r\n", 'an mbox "From " line', first_body_line=b"From x@y Mon")
        self.assertRefused(b"From: a@b.example\r\nX: a\x00b\r\n", "NUL")
        self.assertRefused(b"From: a@b.example\r\nfrom: c@d.example\r\n", "more than one From header field")
        for name in ("Sender", "Reply-To", "To", "Cc", "Bcc", "Subject"):
            self.assertRefused(f"{name}: a@b.example\r\n{name}: c@d.example\r\n".encode(), f"more than one {name} header field")
        self.assertRefused(b"From: g: a@b.example;\r\n", "a group in the From header")
        self.assertRefused(b"From: a@b.example\r\nSender: g:;\r\n", "a group in the Sender header")
        self.assertRefused(b"From:\r\n", "no address in the From header")
        self.assertRefused(b"Resent-From: \r\n", "no address in the Resent-From header")
        self.assertRefused(b"From: a@b.example\r\nSender: a@b.example, c@d.example\r\n", "more than one address in the Sender header")
        self.assertRefused(b"Resent-Sender: a@b.example, c@d.example\r\n", "more than one address in the Resent-Sender header")
        self.assertRefused(b"From: a@b.example, c@d.example\r\n", "several From addresses without a Sender")
        self.assertRefused(b"To: victim@x.example, outsider@evil.example:;\r\n", "To:")
        self.assertRefused(b"Resent-To: a@b.example;c@d.example\r\n", "Resent-To:")

    def test_message_opening_with_an_indented_line_is_refused(self):
        # Intake ends the header section at a first line that starts with white space, so the
        # gateway sees no header fields; the email package drops the line as a defect and reads
        # the fields after it as the header section.  Two readers, two From: refused.
        section = b" X: y\r\nFrom: ceo@corp.example\r\nSubject: x\r\n\r\nbody\r\n"
        self.assertRefused(b"", "starts with an indented line", first_body_line=section.split(b"\r\n")[0])
        self.assertRefused(b"", "starts with an indented line", first_body_line=b"\tFrom: ceo@corp.example")

    def test_allowed_repetitions_and_groups(self):
        judged = parse_header_section(b"From: a@b.example, c@d.example\r\nSender: c@d.example\r\n"
                                      b"Resent-From: r@x.example\r\nResent-From: s@x.example\r\n"
                                      b"X-A: 1\r\nX-A: 2\r\nTo: g: t@x.example;, u@x.example\r\n")
        self.assertEqual(judged.header_sender().address, "c@d.example")
        self.assertEqual([m.address for m in judged.mailboxes("resent-from")], ["r@x.example", "s@x.example"])
        self.assertEqual([n for n, _ in judged.identity_mailboxes()], ["From", "From", "Sender", "Resent-From", "Resent-From"])
        self.assertEqual([m.address for m in judged.mailboxes("to")], ["t@x.example", "u@x.example"])
        self.assertEqual(judged.get_all("x-a"), ["1", "2"])
        self.assertIsNone(parse_header_section(b"Subject: s\r\n").header_sender())
        self.assertEqual(parse_header_section(b"Sender: s@x.example\r\n").header_sender().address, "s@x.example")

    def test_field_limit(self):
        limits = MailLimits(max_fields=3)
        self.assertEqual(len(parse_header_section(b"A: 1\r\nB: 2\r\nC: 3\r\n", limits).fields), 3)
        self.assertRefused(b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n", "more than 3 header fields", LimitExceeded, limits=limits)
        self.assertEqual(DEFAULT_LIMITS.max_fields, 1000)

    def test_address_limit_counts_every_occurrence(self):
        limits = MailLimits(max_addresses=2)
        self.assertEqual(len(parse_header_section(b"Resent-To: a@x.example\r\nResent-To: b@x.example\r\n", limits).mailboxes("resent-to")), 2)
        self.assertRefused(b"Resent-To: a@x.example, b@x.example\r\nResent-To: c@x.example\r\n",
                           "more than 2 addresses in the Resent-To header", LimitExceeded, limits=limits)

    def test_field_name_tables(self):
        self.assertEqual(display_name_of("reply-to"), "Reply-To")
        self.assertEqual(display_name_of("resent-from"), "Resent-From")
        self.assertEqual(display_name_of("x-custom-thing"), "X-Custom-Thing")
        self.assertEqual(IDENTITY_FIELDS, ("from", "sender", "resent-from", "resent-sender"))
        self.assertTrue(set(IDENTITY_FIELDS) <= set(ADDRESS_FIELDS))
        self.assertIn("subject", SINGLE_FIELDS)
        self.assertNotIn("resent-from", SINGLE_FIELDS)

    def test_sending_mailbox_choice(self):
        judged = parse_header_section(b"From: Alice <Alice@Corp.Example.>\r\n")
        self.assertEqual(choose_sending_mailbox(judged, "b@x.example", "header-from"), "alice@corp.example")
        self.assertEqual(choose_sending_mailbox(judged, "B@X.example", "envelope-from"), "b@x.example")
        self.assertEqual(choose_sending_mailbox(judged, "", "envelope-from"), "alice@corp.example")
        self.assertEqual(choose_sending_mailbox(judged, "  ", "envelope-from"), "alice@corp.example")
        self.assertEqual(choose_sending_mailbox(judged, "b@x.example", "Relay@Corp.Example"), "relay@corp.example")
        self.assertEqual(choose_sending_mailbox(judged, "b@x.example", " not an address "), "not an address")
        empty = parse_header_section(b"Subject: s\r\n")
        self.assertEqual(choose_sending_mailbox(empty, "B@x.example", "header-from"), "b@x.example")
        self.assertIsNone(choose_sending_mailbox(empty, "", "header-from"))
        self.assertIsNone(choose_sending_mailbox(None, "", "envelope-from"))
        self.assertEqual(choose_sending_mailbox(None, "b@x.example", "header-from"), "b@x.example")


class PatternTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(SenderPattern.parse(" * ").any, True)
        self.assertEqual(SenderPattern.parse("*").text, ANY_SENDER)
        p = SenderPattern.parse("Scanner@Corp.Example.")
        self.assertEqual((p.text, p.local, p.domain, p.exact, p.any), ("scanner@corp.example", "scanner", "corp.example", True, False))
        self.assertEqual(SenderPattern.parse('"Scanner"@corp.example').text, "scanner@corp.example")
        self.assertEqual(SenderPattern.parse('"a b"@corp.example').text, '"a b"@corp.example')
        self.assertEqual(SenderPattern.parse('"a\\"b"@corp.example').local, 'a"b')
        self.assertFalse(SenderPattern.parse("*@corp.example").exact)
        self.assertFalse(SenderPattern.parse("a?@corp.example").exact)
        self.assertFalse(SenderPattern.parse("a@[ab]c.example").exact)
        for bad in ("", " ", "corp.example", "@corp.example", "a@", "a b@corp.example", "a@corp example", "<a@b.example>",
                    "a\x01@b.example", '"a\x01"@b.example', "a@b\x7f.example", "x" * 65 + "@b.example", "a@" + "b" * 256, 5, None):
            self.assertRaises(PatternError, SenderPattern.parse, bad)
        self.assertEqual(len(parse_patterns(["*", "a@b.example"])), 2)

    def test_matching(self):
        def match(pattern, address):
            return SenderPattern.parse(pattern).matches(address)

        self.assertTrue(match("*", "anything at all"))
        self.assertTrue(match("scanner@corp.example", "Scanner@CORP.example."))
        self.assertTrue(match("scanner@corp.example", '"scanner"@corp.example'))
        self.assertFalse(match("scanner@corp.example", "scanner@corp.example.evil"))
        self.assertFalse(match("scanner@corp.example", "scanner+x@corp.example"))
        self.assertFalse(match("scanner@corp.example", "not an address"))
        self.assertTrue(match("*@corp.example", "a@Corp.Example"))
        self.assertFalse(match("*@corp.example", "a@evilcorp.example"))
        self.assertFalse(match("*@corp.example", '"a@corp.example"@evil.example'))
        self.assertTrue(match("*@*.corp.example", "a@mx.corp.example"))
        self.assertFalse(match("*@*.corp.example", "a@corp.example"))
        self.assertTrue(match("alerts-*@corp.example", "alerts-db@corp.example"))
        self.assertFalse(match("alerts-*@corp.example", "alert@corp.example"))
        self.assertTrue(match('"a b"@corp.example', '"A B"@corp.example'))
        self.assertTrue(matches_any(parse_patterns(["x@y.example", "*@corp.example"]), "a@corp.example"))
        self.assertFalse(matches_any(parse_patterns(["x@y.example"]), "a@corp.example"))
        self.assertFalse(matches_any((), "a@corp.example"))
        p = SenderPattern.parse("*@corp.example")
        self.assertTrue(p.matches_parts("a", "corp.example"))
        self.assertTrue(SenderPattern.parse("*").matches_parts("a", "b"))
        self.assertFalse(SenderPattern.parse("a@b.example").matches_parts("a", "c.example"))


class MessageBoundaryTests(SynchronousTestCase):
    """Cases chosen to tell a correct judge from a slightly wrong one (mutation testing)."""

    def test_body_after_the_section_is_never_read(self):
        judged = parse_header_section(b"A: 1\r\n\r\nbody\r\n\r\nFrom : x\r\n")
        self.assertEqual(judged.raw, b"A: 1\r\n")

    def test_invalid_utf8_in_an_address_field_is_replaced_not_fatal(self):
        judged = parse_header_section(b"From: \xff <a@b.example>\r\n")
        self.assertEqual(judged.mailboxes("from")[0].display_name, "\ufffd")

    def test_limits_reach_the_address_parser(self):
        self.assertRaises(LimitExceeded, parse_header_section,
                          b"From: =?utf-8?q?a?= =?utf-8?q?b?= <a@b.example>\r\n", MailLimits(max_encoded_words=1))
        self.assertRaises(MalformedHeader, parse_header_section, b"From: a@b.example ((x))\r\n", MailLimits(max_comment_depth=1))
        self.assertRaises(LimitExceeded, parse_header_section, b"To: a@b.example\r\n", MailLimits(max_tokens=2))

    def test_folded_mbox_line_is_still_an_mbox_line(self):
        self.assertRaises(MalformedHeader, parse_header_section, b"From: a@b.example\r\nFrom x@y Mon\r\n\tmore\r\n")

    def test_header_line_folding_is_kept_and_cleaned(self):
        import email.policy

        value = " ".join(["word"] * 40)
        policy = email.policy.SMTP
        self.assertEqual(header_line("Subject", value), policy.fold_binary("Subject", policy.header_factory("Subject", value)))
        folded = header_line("Subject", value)
        self.assertEqual(folded.replace(b"\r\n", b"").decode().split(": ", 1)[1], value)
        self.assertEqual(header_line("X", "a\rb"), b"X: a b\r\n")
        self.assertEqual(header_line("X", "a\nb"), b"X: a b\r\n")
        self.assertNotIn(b"\x00", header_line("Subject", "=?utf-8?q?a=00b?="))
        cr = header_line("Subject", "=?utf-8?q?a=0Db?= c")
        self.assertEqual(cr.count(b"\r"), cr.count(b"\r\n"))
        self.assertEqual(len(split_fields(cr)), 1)
        lf = header_line("Subject", "=?utf-8?q?a=0A=0A=0Ab?= c")
        self.assertEqual(lf.count(b"\n"), lf.count(b"\r\n"))
        self.assertEqual(len(split_fields(lf)), 1)
        self.assertNotIn(b"\r\n\r\n", lf)


class PatternBoundaryTests(SynchronousTestCase):
    def test_quoting_and_escapes(self):
        self.assertEqual(SenderPattern.parse('a"@x.example').local, 'a"')
        self.assertEqual(SenderPattern.parse('"a@x.example').local, '"a')
        self.assertEqual(SenderPattern.parse('""@x.example').local, "")
        self.assertEqual(SenderPattern.parse('"a\\\\b"@x.example').local, "a\\b")
        self.assertEqual(SenderPattern.parse('"a\\\\\\\\b"@x.example').local, "a\\\\b")
        self.assertEqual(SenderPattern.parse('" "@x.example').local, " ")
        self.assertEqual(SenderPattern.parse("a@b@x.example").domain, "x.example")

    def test_refusals(self):
        for bad in ("a<@x.example", "a>@x.example", "a@x.example>", "a@x.exa\x7fmple", '"a\x7f"@x.example', '"a\tb"@x.example'):
            self.assertRaises(PatternError, SenderPattern.parse, bad)

    def test_lengths(self):
        self.assertEqual(len(SenderPattern.parse("a" * 64 + "@x.example").local), 64)
        self.assertRaises(PatternError, SenderPattern.parse, "a" * 65 + "@x.example")
        self.assertEqual(len(SenderPattern.parse("a@" + "b" * 255).domain), 255)
        self.assertRaises(PatternError, SenderPattern.parse, "a@" + "b" * 256)

    def test_header_line_replaces_nul_by_a_space(self):
        self.assertEqual(header_line("Subject", "=?utf-8?q?a=00b?="), b"Subject: a b\r\n")
