"""sender-allowlist: envelope and header senders, per login / network / globally, spoofing attempts."""

from __future__ import annotations

import os
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.mime import MessageFormatError, choose_mailbox, read_header_section
from gateway.policy.addresses import AddressPattern, header_addresses
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import PolicyConfigError, Reject
from gateway.policy.sender_allowlist import build
from gateway.smtp.headers import HeaderCollector
from gateway.testing.policy import make_message, make_session, run_transaction


def message(from_header: str, extra: str = "") -> bytes:
    return f"From: {from_header}\r\n{extra}To: someone@corp.example\r\nSubject: hi\r\n\r\nbody\r\n".encode()


class PatternTests(SynchronousTestCase):
    def test_exact_domain_and_glob(self):
        exact = AddressPattern.parse("scanner@corp.example", "allow")
        domain = AddressPattern.parse("*@corp.example", "allow")
        glob = AddressPattern.parse("scan-*@*.corp.example", "allow")
        self.assertTrue(exact.matches("scanner@corp.example"))
        self.assertTrue(exact.matches("Scanner@CORP.Example"))
        self.assertFalse(exact.matches("scanner2@corp.example"))
        self.assertTrue(domain.matches("anyone@Corp.Example"))
        self.assertFalse(domain.matches("x@evilcorp.example"))
        self.assertFalse(domain.matches("x@corp.example.evil.example"))
        self.assertFalse(domain.matches("a@corp.example@evil.example"))
        self.assertTrue(glob.matches("scan-3@floor2.corp.example"))
        self.assertFalse(glob.matches("scan-3@corp.example"))
        self.assertFalse(domain.matches("no-at-sign"))

    def test_bad_patterns_name_the_option(self):
        for bad in ["corp.example", "@corp.example", "a b@corp.example", "<a@corp.example>", ""]:
            e = self.assertRaises(PolicyConfigError, AddressPattern.parse, bad, "allow")
            self.assertEqual(e.option, "allow")


class SenderAllowlistTests(SynchronousTestCase):
    def chain(self, **options):
        return PolicyChain([build(options, PolicyContext(clock=Clock()))])

    def send(self, chain, session, sender, raw=None):
        return self.successResultOf(run_transaction(chain, session, sender, ["someone@corp.example"], raw))

    # -- envelope

    def test_global_allowlist_accepts_and_rejects_envelope_sender(self):
        chain = self.chain(allow=["*@corp.example"])
        ok = self.send(chain, make_session(), "alice@corp.example", message("alice@corp.example"))
        self.assertEqual(ok.step, "message")
        self.assertTrue(ok.allowed)
        refused = self.send(chain, make_session(), "mallory@evil.example")
        self.assertEqual(refused.step, "mail")
        self.assertEqual(refused.result.verdict, Reject(550, "5.7.1", "Sender address not allowed"))

    def test_per_login_rule_beats_global(self):
        chain = self.chain(allow=["*@corp.example"], per_login={"printer@corp.example": ["scanner@corp.example"]})
        printer = make_session(login="Printer@corp.example")
        self.assertTrue(self.send(chain, printer, "scanner@corp.example", message("scanner@corp.example")).allowed)
        refused = self.send(chain, printer, "alice@corp.example")
        self.assertEqual((refused.step, refused.allowed), ("mail", False))
        # Someone else still gets the global rule.
        self.assertTrue(self.send(chain, make_session(login="alice@corp.example"), "alice@corp.example").allowed)

    def test_login_globs_and_exact_logins_prefer_exact(self):
        chain = self.chain(per_login={
            "*@printers.corp.example": ["*@printers.corp.example"],
            "boss@printers.corp.example": ["boss@corp.example"],
        })
        self.assertTrue(self.send(chain, make_session(login="p1@printers.corp.example"), "p1@printers.corp.example").allowed)
        self.assertTrue(self.send(chain, make_session(login="boss@printers.corp.example"), "boss@corp.example").allowed)
        self.assertFalse(self.send(chain, make_session(login="boss@printers.corp.example"), "boss@printers.corp.example").allowed)

    def test_per_network_most_specific_wins(self):
        chain = self.chain(per_network={
            "10.0.0.0/8": ["*@corp.example"],
            "10.1.2.0/24": ["monitoring@corp.example"],
        })
        self.assertTrue(self.send(chain, make_session("10.9.9.9"), "anyone@corp.example").allowed)
        self.assertFalse(self.send(chain, make_session("10.1.2.3"), "anyone@corp.example").allowed)
        self.assertTrue(self.send(chain, make_session("10.1.2.3"), "monitoring@corp.example").allowed)
        self.assertTrue(self.send(chain, make_session("::ffff:10.1.2.3"), "monitoring@corp.example").allowed)

    def test_sessions_no_rule_covers_are_not_restricted(self):
        chain = self.chain(per_login={"printer@corp.example": ["scanner@corp.example"]})
        self.assertTrue(self.send(chain, make_session(), "anyone@elsewhere.example", message("anyone@elsewhere.example")).allowed)

    def test_null_sender_refused_unless_allowed(self):
        self.assertFalse(self.send(self.chain(allow=["*@corp.example"]), make_session(), "").allowed)
        self.assertTrue(self.send(self.chain(allow=["*@corp.example"], allow_null_sender=True), make_session(), "").allowed)

    def test_admin_reject_text_and_code(self):
        chain = self.chain(allow=["*@corp.example"], reject_text="Use your own address", reject_code=553, reject_status="5.7.1")
        result = self.send(chain, make_session(), "x@evil.example")
        self.assertEqual(result.result.verdict, Reject(553, "5.7.1", "Use your own address"))

    # -- header From / Sender spoofing

    def test_header_from_spoofing_is_rejected_at_end_of_data(self):
        chain = self.chain(per_login={"printer@corp.example": ["scanner@corp.example"]})
        result = self.send(chain, make_session(login="printer@corp.example"), "scanner@corp.example",
                          message("CEO <ceo@corp.example>"))
        self.assertEqual(result.step, "message")
        self.assertFalse(result.allowed)
        self.assertEqual(result.result.verdict.code, 550)

    def test_header_sender_is_checked_too(self):
        chain = self.chain(allow=["scanner@corp.example"])
        raw = message("scanner@corp.example", "Sender: ceo@corp.example\r\n")
        self.assertFalse(self.send(chain, make_session(), "scanner@corp.example", raw).allowed)

    def test_every_from_address_and_every_from_header_is_checked(self):
        chain = self.chain(allow=["scanner@corp.example"])
        for raw in [
            message("scanner@corp.example, ceo@corp.example"),
            message("scanner@corp.example", "From: ceo@corp.example\r\n"),
            message("<ceo@corp.example>, \"x\" <scanner@corp.example>"),
        ]:
            self.assertFalse(self.send(chain, make_session(), "scanner@corp.example", raw).allowed, raw)

    def test_display_name_tricks_do_not_matter_only_the_address(self):
        chain = self.chain(allow=["scanner@corp.example"])
        # A display name that shows another address is refused by the mail grammar (issue 8,
        # finding 5): the reader would see the CEO's address.
        shown = message("\"ceo@corp.example\" <scanner@corp.example>")
        self.assertFalse(self.send(chain, make_session(), "scanner@corp.example", shown).allowed)
        ok = message("\"scanner@corp.example\" <scanner@corp.example>")
        self.assertTrue(self.send(chain, make_session(), "scanner@corp.example", ok).allowed)
        spoof = message("\"scanner@corp.example\" <ceo@corp.example>")
        self.assertFalse(self.send(chain, make_session(), "scanner@corp.example", spoof).allowed)
        encoded = message("=?utf-8?q?scanner@corp.example?= <ceo@corp.example>")
        self.assertFalse(self.send(chain, make_session(), "scanner@corp.example", encoded).allowed)

    def test_malformed_from_is_rejected_not_guessed(self):
        chain = self.chain(allow=["scanner@corp.example"])
        for bad in ["scanner@corp.example <ceo@corp.example>", "garbage", "undisclosed:;", "foo <>"]:
            result = self.send(chain, make_session(), "scanner@corp.example", message(bad))
            self.assertFalse(result.allowed, bad)
            self.assertEqual(result.result.verdict.code, 550)

    def test_check_envelope_only_ignores_headers(self):
        chain = self.chain(allow=["scanner@corp.example"], check=["envelope"])
        self.assertTrue(self.send(chain, make_session(), "scanner@corp.example", message("ceo@corp.example")).allowed)

    def test_check_headers_only_ignores_envelope(self):
        chain = self.chain(allow=["scanner@corp.example"], check=["from"])
        self.assertTrue(self.send(chain, make_session(), "bounce@elsewhere.example", message("scanner@corp.example")).allowed)

    # -- options

    def test_invalid_options_name_the_option(self):
        context = PolicyContext(clock=Clock())
        for options, option in [
            ({}, "allow"),
            ({"allow": "not-a-pattern"}, "allow"),
            ({"per_network": {"10.0.0.300/8": ["*@x.example"]}}, "per_network"),
            ({"per_login": {"p": "bad"}}, "per_login"),
            ({"allow": ["*@x.example"], "check": ["body"]}, "check"),
            ({"allow": ["*@x.example"], "reject_text": "two\nlines"}, "reject_text"),
            ({"allow": ["*@x.example"], "reject_code": 451}, "reject_code"),
            ({"allow": ["*@x.example"], "reject_status": "4.7.1"}, "reject_status"),
            ({"allow": ["*@x.example"], "alow": ["typo"]}, "alow"),
        ]:
            e = self.assertRaises(PolicyConfigError, build, options, context)
            self.assertEqual(e.option, option, (options, str(e)))


class DuplicateHeaderTests(SynchronousTestCase):
    """Two From headers are refused, not judged one by one: readers may pick different ones."""

    def test_second_from_header_is_a_problem(self):
        import email.parser
        import email.policy

        from gateway.policy.addresses import header_addresses

        headers = email.parser.BytesHeaderParser(policy=email.policy.SMTP).parsebytes(
            b"From: alice@corp.example\r\nFrom: ceo@corp.example\r\n\r\n"
        )
        found = header_addresses(headers, "From")
        self.assertEqual(found.problem, "more than one From header field")
        self.assertEqual(found.addresses, ())


# header From/Sender the ``email`` parser does not see, but the SMTP intake and the
# Graph deliverer do (obsolete ``From :`` syntax, a field name followed by a tab), must not slip
# past sender checks; a From whose encoded words decode to a line break is refused, not a
# policy crash (451 forever).
RECEIVED = b"Received: from client (client [192.0.2.10]) by gw with ESMTP id Q1\r\n"

HIDDEN_FROM = [
    # "From " + colon later: the email parser takes it for a misplaced mbox "From " line.
    b"From : ceo@corp.example\r\nTo: someone@corp.example\r\nSubject: hi\r\n",
    # A tab before the colon: the email parser ends the header section there.
    b"Subject\t: hi\r\nFrom: ceo@corp.example\r\nTo: someone@corp.example\r\n",
    b"To: someone@corp.example\r\nFrom\t: ceo@corp.example\r\n",
]


class HiddenHeaderTests(SynchronousTestCase):
    def chain(self):
        return PolicyChain([build({"allow": ["scanner@corp.example"]}, PolicyContext(clock=Clock()))])

    def test_graph_and_intake_do_see_these_from_fields(self):
        """
        The premise was: what the policies cannot see is what Graph sends as.  Since issue 8
        the intake keeps them as header fields still, but every reader judges them with
        gateway.mail, and the deliverer refuses such an (old, unrecorded) entry outright.
        """
        for lines in HIDDEN_FROM:
            collector = HeaderCollector(10000)
            header_lines, _ = collector.feed(lines + b"\r\nbody\r\n")
            self.assertEqual(header_lines, lines)  # the intake keeps them as header fields
            fd, path = tempfile.mkstemp()
            self.addCleanup(os.remove, path)
            with os.fdopen(fd, "wb") as f:
                f.write(RECEIVED + lines + b"\r\nbody\r\n")
            section = read_header_section(path)
            self.assertRaises(MessageFormatError, choose_mailbox, section, "scanner@corp.example", "header-from")

    def test_hidden_from_is_refused_by_sender_allowlist(self):
        for lines in HIDDEN_FROM:
            for raw in (RECEIVED + lines + b"\r\nbody\r\n", lines + b"\r\nbody\r\n"):
                result = self.successResultOf(run_transaction(
                    self.chain(), make_session(), "scanner@corp.example", ["someone@corp.example"], raw,
                ))
                self.assertEqual(result.step, "message")
                self.assertFalse(result.allowed, raw)
                self.assertIsInstance(result.result.verdict, Reject)

    def test_header_addresses_reports_a_misparsed_section(self):
        for lines in HIDDEN_FROM:
            found = header_addresses(make_message(RECEIVED + lines + b"\r\nbody\r\n").headers, "From")
            self.assertIsNotNone(found.problem, lines)

    def test_well_formed_section_still_passes(self):
        raw = RECEIVED + b"From: Scanner <scanner@corp.example>\r\nTo: someone@corp.example\r\n\r\nFrom : in the body\r\n"
        result = self.successResultOf(run_transaction(
            self.chain(), make_session(), "scanner@corp.example", ["someone@corp.example"], raw,
        ))
        self.assertTrue(result.allowed)


class EncodedLineBreakTests(SynchronousTestCase):
    RAW = RECEIVED + b"From: =?utf-8?q?Evil=0D=0ABcc:_x@y.example?= <scanner@corp.example>\r\nTo: a@corp.example\r\n\r\nb\r\n"

    def test_header_addresses_reports_a_problem_instead_of_raising(self):
        found = header_addresses(make_message(self.RAW).headers, "From")
        self.assertIsNotNone(found.problem)

    def test_sender_allowlist_refuses_permanently(self):
        chain = PolicyChain([build({"allow": ["scanner@corp.example"]}, PolicyContext(clock=Clock()))])
        result = self.successResultOf(run_transaction(chain, make_session(), "scanner@corp.example", ["a@corp.example"], self.RAW))
        self.assertEqual(result.step, "message")
        self.assertEqual(result.result.verdict.code, 550)
