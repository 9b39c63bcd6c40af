"""
Review: header From/Sender the ``email`` parser does not see, but the SMTP intake and the
Graph deliverer do (obsolete ``From :`` syntax, a field name followed by a tab), must not slip
past sender checks; a From whose encoded words decode to a line break is refused, not a
policy crash (451 forever).
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.mime import (
    MessageFormatError,
    choose_mailbox,
    read_header_section,
)
from gateway.policy.addresses import header_addresses
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import Reject
from gateway.policy.sender_allowlist import build
from gateway.policy.testing import make_message, make_session, run_transaction
from gateway.smtp.headers import HeaderCollector

# As the SMTP layer builds the header section the policies see: its Received line comes first.
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
