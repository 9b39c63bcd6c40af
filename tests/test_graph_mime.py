"""Header section reading, address lists, the exact-recipient plan and the sending mailbox."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.delivery.graph.mime import (
    HeaderSection,
    MessageFormatError,
    choose_mailbox,
    filter_address_list,
    plan_recipients,
    read_header_section,
    split_address_list,
    split_fields,
)

HEADERS = (
    b"Received: from client.test by gw.test; Mon, 1 Jan 2029 00:00:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=contoso.test; s=sel;\r\n"
    b"\tbh=abc; b=def\r\n"
    b"From: Alice <alice@contoso.test>\r\n"
    b"To: \"Smith, Bob\" <bob@fabrikam.test>, Carol <carol@fabrikam.test>\r\n"
    b"Cc: dave@fabrikam.test\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <m1@contoso.test>\r\n"
)


def section_of(testcase, header: bytes = HEADERS, body: bytes = b"Body line\r\n"):
    path = testcase.mktemp()
    with open(path, "wb") as f:
        f.write(header + b"\r\n" + body)
    return read_header_section(path), path


class ReadHeaderSectionTests(SynchronousTestCase):
    def test_fields_and_body_offset(self):
        section, path = section_of(self)
        self.assertEqual(section.raw, HEADERS)
        self.assertEqual(section.body_offset, len(HEADERS) + 2)
        self.assertEqual(section.size, os.path.getsize(path))
        self.assertEqual(section.addresses("to"), ["bob@fabrikam.test", "carol@fabrikam.test"])
        dkim = [f for f in section.fields if f.lname == b"dkim-signature"][0]
        self.assertIn(b"\r\n\tbh=abc", dkim.raw)

    def test_message_without_body(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"From: a@b.test\r\nTo: c@d.test\r\n")
        section = read_header_section(path)
        self.assertEqual(section.body_offset, section.size)
        self.assertEqual(section.addresses("from"), ["a@b.test"])

    def test_oversized_header_section_is_a_format_error(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"X-Junk: " + b"a" * 5000 + b"\r\n")
        self.assertRaises(MessageFormatError, read_header_section, path, 1000)


class AddressListTests(SynchronousTestCase):
    def test_split_understands_quotes_comments_and_groups(self):
        items = split_address_list('"Smith, J" <a@x.test>, b@y.test (c, d), Team: c@z.test, d@z.test;, undisclosed-recipients:;')
        self.assertEqual([i.address for i in items[:2]], ["a@x.test", "b@y.test"])
        self.assertEqual(items[2].group, "Team")
        self.assertEqual([m.address for m in items[2].members], ["c@z.test", "d@z.test"])
        self.assertEqual((items[3].group, items[3].members), ("undisclosed-recipients", ()))

    def test_filter_keeps_original_text(self):
        kept, removed = filter_address_list('"Smith, J" <A@X.test>, b@y.test, Team: c@z.test, d@z.test;', {"a@x.test", "d@z.test"})
        self.assertEqual(kept, ['"Smith, J" <A@X.test>', "Team: d@z.test;"])
        self.assertTrue(removed)
        kept, removed = filter_address_list("undisclosed-recipients:;", set())
        self.assertEqual((kept, removed), (["undisclosed-recipients:;"], False))


class PlanTests(SynchronousTestCase):
    def test_headers_equal_envelope_is_plain(self):
        section, _ = section_of(self)
        plan = plan_recipients(section, ["Bob@Fabrikam.test", "carol@fabrikam.test", "dave@fabrikam.test"])
        self.assertEqual((plan.kind, plan.header, plan.hidden, plan.permission), ("plain", HEADERS, (), "Mail.Send"))

    def test_envelope_only_recipient_gets_a_bcc_header(self):
        section, _ = section_of(self)
        plan = plan_recipients(section, ["bob@fabrikam.test", "carol@fabrikam.test", "dave@fabrikam.test", "erin@x.test"])
        self.assertEqual(plan.kind, "rewrite")
        self.assertEqual(plan.hidden, ("erin@x.test",))
        self.assertTrue(plan.header.startswith(HEADERS))
        self.assertEqual(plan.header[len(HEADERS):], b"Bcc: erin@x.test\r\n")

    def test_header_recipient_not_in_envelope_is_removed(self):
        section, _ = section_of(self)
        plan = plan_recipients(section, ["bob@fabrikam.test", "dave@fabrikam.test"])
        self.assertEqual(plan.kind, "rewrite")
        self.assertTrue(plan.removed)
        self.assertIn(b'To: "Smith, Bob" <bob@fabrikam.test>\r\n', plan.header)
        self.assertNotIn(b"carol", plan.header)
        # Everything else stays byte for byte, in order.
        for line in (b"Received:", b"\tbh=abc; b=def\r\n", b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n", b"Cc: dave@fabrikam.test\r\n"):
            self.assertIn(line, plan.header)
        self.assertNotIn(b"Bcc", plan.header)

    def test_field_emptied_entirely_is_dropped(self):
        section, _ = section_of(self)
        plan = plan_recipients(section, ["bob@fabrikam.test", "carol@fabrikam.test"])
        self.assertNotIn(b"Cc:", plan.header)

    def test_original_bcc_header_is_regenerated(self):
        section, _ = section_of(self, HEADERS + b"Bcc: secret@x.test, gone@x.test\r\n")
        plan = plan_recipients(section, ["bob@fabrikam.test", "carol@fabrikam.test", "dave@fabrikam.test", "secret@x.test"])
        self.assertEqual(plan.kind, "rewrite")
        self.assertIn(b"Bcc: secret@x.test\r\n", plan.header)
        self.assertNotIn(b"gone@x.test", plan.header)
        plan = plan_recipients(section, ["bob@fabrikam.test", "carol@fabrikam.test", "dave@fabrikam.test", "secret@x.test", "gone@x.test"])
        self.assertEqual(plan.kind, "plain")

    def test_draft_mode_keeps_hidden_recipients_out_of_the_mime(self):
        section, _ = section_of(self, HEADERS + b"Bcc: secret@x.test\r\n")
        plan = plan_recipients(section, ["bob@fabrikam.test", "secret@x.test", "erin@x.test"], "draft")
        self.assertEqual((plan.kind, plan.hidden, plan.permission), ("draft", ("secret@x.test", "erin@x.test"), "Mail.ReadWrite + Mail.Send"))
        self.assertNotIn(b"secret", plan.header)
        self.assertNotIn(b"erin", plan.header)
        self.assertNotIn(b"carol", plan.header)
        # Removal only: a MIME rewrite is enough even in draft mode.
        self.assertEqual(plan_recipients(section, ["bob@fabrikam.test"], "draft").kind, "rewrite")
        clean, _ = section_of(self)
        self.assertEqual(plan_recipients(clean, ["bob@fabrikam.test", "carol@fabrikam.test", "dave@fabrikam.test"], "draft").kind, "plain")

    def test_many_hidden_recipients_are_folded(self):
        section, _ = section_of(self, b"From: a@b.test\r\nTo: bob@fabrikam.test\r\n")
        hidden = [f"user{i:03d}@example.test" for i in range(40)]
        plan = plan_recipients(section, ["bob@fabrikam.test"] + hidden)
        lines = plan.header.split(b"\r\n")
        self.assertTrue(all(len(line) <= 78 for line in lines))
        self.assertEqual(plan.header.count(b"@example.test"), 40)


class MailboxTests(SynchronousTestCase):
    def test_modes(self):
        section, _ = section_of(self)
        self.assertEqual(choose_mailbox(section, "bounces@contoso.test", "header-from"), "alice@contoso.test")
        self.assertEqual(choose_mailbox(section, "bounces@contoso.test", "envelope-from"), "bounces@contoso.test")
        self.assertEqual(choose_mailbox(section, "bounces@contoso.test", "relay@contoso.test"), "relay@contoso.test")

    def test_fallbacks(self):
        section, _ = section_of(self, b"To: bob@fabrikam.test\r\n")
        self.assertEqual(choose_mailbox(section, "app@contoso.test", "header-from"), "app@contoso.test")
        with_from, _ = section_of(self)
        self.assertEqual(choose_mailbox(with_from, "", "envelope-from"), "alice@contoso.test")
        self.assertRaises(MessageFormatError, choose_mailbox, section, "", "header-from")

    def test_several_from_addresses_use_sender(self):
        section, _ = section_of(self, b"From: a@contoso.test, b@contoso.test\r\nSender: b@contoso.test\r\nTo: x@y.test\r\n")
        self.assertEqual(choose_mailbox(section, "", "header-from"), "b@contoso.test")


# exact recipients (invariant 3) when an address-list entry is ambiguous.
#
# A header entry such as ``alice@x;bob@y`` or ``<alice@x> <bob@y>`` is one entry to the
# gateway's splitter but two recipients to a lenient parser (Python's getaddresses, which the
# fake Graph uses as its model of Exchange, and Outlook/Exchange, which treat ``;`` as a
# separator).  Kept verbatim, it would deliver to an address that is not an envelope recipient.
ALICE = "alice@contoso.test"
BOB = "bob@fabrikam.test"
CAROL = "carol@fabrikam.test"


def section(text: str) -> HeaderSection:
    raw = text.encode("utf-8")
    return HeaderSection(tuple(split_fields(raw)), len(raw) + 2, len(raw) + 2)


class AmbiguousEntryPlanTests(TestCase):
    def assertCarolRemoved(self, header: str) -> None:
        plan = plan_recipients(section(f"From: {ALICE}\r\n{header}\r\nSubject: x\r\n"), [BOB])
        self.assertNotEqual(plan.kind, "plain")
        self.assertNotIn(CAROL.encode(), plan.header)
        # Bob still receives: visibly or as a Bcc.
        self.assertIn(BOB.encode(), plan.header)

    def test_semicolon_separated_entry(self):
        self.assertCarolRemoved(f"To: {BOB};{CAROL}")

    def test_semicolon_and_space_separated_entry(self):
        self.assertCarolRemoved(f"Cc: {BOB}; {CAROL}")

    def test_two_angle_addresses_in_one_entry(self):
        self.assertCarolRemoved(f"To: <{BOB}> <{CAROL}>")

    def test_same_address_twice_in_one_entry_is_not_ambiguous(self):
        plan = plan_recipients(section(f"From: {ALICE}\r\nTo: {BOB} <{BOB}>\r\n"), [BOB])
        self.assertEqual(plan.kind, "plain")
