"""header-rewrite: the edits it asks for, and that the rewritten header section parses back cleanly."""

from __future__ import annotations

import email.policy
from email.parser import BytesParser

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.header_rewrite import build
from gateway.policy.headers import apply_edits, header_line
from gateway.policy.interfaces import Continue, EditHeaders, PolicyConfigError
from gateway.smtp import headers as smtp_headers
from gateway.testing.policy import make_message, make_session, run_transaction

RAW = (
    b"Received: from scanner.lan (10.1.2.3) by relay.lan\r\n"
    b"Received: from localhost by scanner.lan\r\n"
    b"X-Originating-IP: [10.1.2.3]\r\n"
    b"From: =?iso-8859-1?q?J=F6rg_M=FCller?= <printer@corp.example>\r\n"
    b"Reply-To: printer@corp.example\r\n"
    b"To: team@corp.example\r\n"
    b"Subject: =?utf-8?b?U2NhbiB2b24gRMO8c3NlbGRvcmY=?=\r\n"
    b"X-Mailer: ScanMaster 3000\r\n"
    b"\r\n"
    b"body\r\n"
)


class HeaderRewriteTests(SynchronousTestCase):
    def rewrite(self, raw=RAW, session=None, **options):
        """Run the policy through a chain and return (edits, the delivered message parsed back)."""
        chain = PolicyChain([build(options, PolicyContext(clock=Clock()))])
        result = self.successResultOf(chain.on_message(session or make_session(), make_message(raw)))
        self.assertTrue(result.allowed)
        edited = apply_edits(make_message(raw).headers, result.edits)
        # Write it out the way an SMTP layer would (RFC 2047 for non-ASCII) and parse it again.
        written = edited.as_bytes(policy=email.policy.SMTP)
        self.assertTrue(written.isascii(), written)
        return result.edits, BytesParser(policy=email.policy.SMTP).parsebytes(written), written

    def test_from_rewritten_keeping_encoded_display_name(self):
        edits, parsed, written = self.rewrite(**{"from": "scanner@corp.example"})
        (edit,) = edits
        self.assertEqual((edit.action, edit.name), ("replace", "From"))
        # Already ASCII: the display name is an encoded word, the address is left as it is.
        self.assertTrue(edit.value.isascii())
        self.assertTrue(edit.value.startswith("=?utf-8?"))
        self.assertTrue(edit.value.endswith(" <scanner@corp.example>"))
        (address,) = parsed["From"].addresses
        self.assertEqual((address.display_name, address.addr_spec), ("Jörg Müller", "scanner@corp.example"))
        self.assertEqual(parsed["From"].defects, ())
        self.assertEqual(len(parsed.get_all("From")), 1)

    def test_from_rewritten_with_configured_display_name(self):
        _, parsed, _ = self.rewrite(**{"from": "Scan Service <scanner@corp.example>"})
        (address,) = parsed["From"].addresses
        self.assertEqual((address.display_name, address.addr_spec), ("Scan Service", "scanner@corp.example"))

    def test_configured_non_ascii_display_name_is_encoded_not_the_address(self):
        edits, parsed, written = self.rewrite(**{"from": "Büro Köln <buero@corp.example>"})
        self.assertIn(b"<buero@corp.example>", written)
        self.assertTrue(edits[0].value.isascii())
        self.assertEqual(str(parsed["From"]), "Büro Köln <buero@corp.example>")

    def test_display_name_with_specials_is_quoted(self):
        raw = RAW.replace(b"From: =?iso-8859-1?q?J=F6rg_M=FCller?=", b'From: "Smith, John"')
        _, parsed, _ = self.rewrite(raw=raw, **{"from": "shared@corp.example"})
        (address,) = parsed["From"].addresses
        self.assertEqual((address.display_name, address.addr_spec), ("Smith, John", "shared@corp.example"))

    def test_keep_display_name_false_drops_it(self):
        _, parsed, _ = self.rewrite(keep_display_name=False, **{"from": "shared@corp.example"})
        self.assertEqual(str(parsed["From"]), "shared@corp.example")

    def test_sender_and_reply_to(self):
        _, parsed, _ = self.rewrite(sender="shared@corp.example", reply_to="Helpdesk <help@corp.example>")
        self.assertEqual(str(parsed["Sender"]), "shared@corp.example")
        self.assertEqual(str(parsed["Reply-To"]), "Helpdesk <help@corp.example>")

    def test_subject_tag_keeps_encoded_subject_valid_and_is_not_doubled(self):
        edits, parsed, written = self.rewrite(subject_tag="[Scan]")
        self.assertEqual(str(parsed["Subject"]), "[Scan] Scan von Düsseldorf")
        self.assertIn(b"=?utf-8?", written)
        # A message that already carries the tag (e.g. a reply) is left alone.
        _, again, _ = self.rewrite(raw=written + b"\r\nbody\r\n", subject_tag="[Scan]")
        self.assertEqual(str(again["Subject"]), "[Scan] Scan von Düsseldorf")

    def test_subject_tag_on_a_message_without_subject(self):
        raw = b"From: a@corp.example\r\n\r\nbody\r\n"
        _, parsed, _ = self.rewrite(raw=raw, subject_tag="[Scan]")
        self.assertEqual(str(parsed["Subject"]), "[Scan]")

    def test_strip_internal_headers_for_privacy(self):
        _, parsed, written = self.rewrite(strip_internal=True)
        self.assertIsNone(parsed["Received"])
        self.assertIsNone(parsed["X-Originating-IP"])
        self.assertNotIn(b"10.1.2.3", written)
        self.assertEqual(str(parsed["To"]), "team@corp.example")

    def test_add_replace_remove(self):
        edits, parsed, _ = self.rewrite(
            add={"X-Relayed-By": "graphsmtp", "X-Note": "Grüße"},
            replace={"X-Mailer": "corp-scanner"},
            remove=["Reply-To"],
        )
        self.assertEqual(str(parsed["X-Relayed-By"]), "graphsmtp")
        self.assertEqual(str(parsed["X-Note"]), "Grüße")
        self.assertEqual(parsed.get_all("X-Mailer"), ["corp-scanner"])
        self.assertIsNone(parsed["Reply-To"])

    def test_scope_limits_rewrites_to_matching_logins(self):
        policy = build({"from": "scanner@corp.example", "logins": ["printer@corp.example"]}, PolicyContext(clock=Clock()))
        other = policy.on_message(make_session(login="alice@corp.example"), make_message(RAW))
        self.assertEqual(other, Continue())
        mine = policy.on_message(make_session(login="printer@corp.example"), make_message(RAW))
        self.assertIsInstance(mine, EditHeaders)

    def test_malformed_original_from_is_replaced_without_keeping_its_name(self):
        raw = b"From: scanner@corp.example <evil@x.example>\r\n\r\nbody\r\n"
        _, parsed, _ = self.rewrite(raw=raw, **{"from": "shared@corp.example"})
        self.assertEqual(str(parsed["From"]), "shared@corp.example")

    def test_header_line_of_a_long_non_ascii_subject_round_trips(self):
        subject = "[Scan] " + "Überweisungsbestätigung " * 8
        line = header_line("Subject", subject.strip())
        self.assertTrue(line.isascii())
        self.assertTrue(all(len(l) <= 78 for l in line.split(b"\r\n")))
        self.assertEqual(str(make_message(line + b"\r\n").headers["Subject"]), subject.strip())

    def test_invalid_options_name_the_option(self):
        context = PolicyContext(clock=Clock())
        for options, option in [
            ({}, "from"),
            ({"from": "not an address"}, "from"),
            ({"from": "a@x.example, b@x.example"}, "from"),
            ({"reply_to": 3}, "reply_to"),
            ({"add": {"Bad Name": "x"}}, "add"),
            ({"add": {"X-A": "one\r\nBcc: victim@x.example"}}, "add"),
            ({"replace": {"X-A": 5}}, "replace"),
            ({"remove": ["Bad:Name"]}, "remove"),
            ({"subject_tag": "  "}, "subject_tag"),
            ({"subject_tag": "[x]", "subjet_tag": "typo"}, "subjet_tag"),
        ]:
            e = self.assertRaises(PolicyConfigError, build, options, context)
            self.assertEqual(e.option, option, (options, str(e)))


# ``header-rewrite`` must not turn a decodable Subject into a policy failure.  A Subject
# whose encoded words decode to a line break used to make the tagged value contain CR LF, which
# the chain (rightly) refuses as header injection — answering 451 for that message forever.
CLIENT_HEADERS = b"From: a@corp.example\r\nSubject: =?utf-8?q?hello=0D=0ABcc:_x@evil.example?=\r\nTo: b@corp.example\r\n"


class SubjectTagTests(SynchronousTestCase):
    def test_tag_on_subject_with_encoded_line_break(self):
        chain = PolicyChain([build({"subject_tag": "[Scan]"}, PolicyContext(clock=Clock()))])
        result = self.successResultOf(run_transaction(
            chain, make_session(), "a@corp.example", ["b@corp.example"], CLIENT_HEADERS + b"\r\nbody\r\n",
        ))
        self.assertEqual(result.step, "message")
        self.assertTrue(result.allowed, result.result)
        written = smtp_headers.apply_edits(CLIENT_HEADERS, result.result.edits)
        lines = written.split(b"\r\n")
        # No injected header line; the Subject is one (possibly folded) field starting with the tag.
        self.assertFalse(any(line.lower().startswith(b"bcc:") for line in lines), written)
        subject = [line for line in lines if line.lower().startswith(b"subject:")]
        self.assertEqual(len(subject), 1, written)
        self.assertIn(b"[Scan]", subject[0])
