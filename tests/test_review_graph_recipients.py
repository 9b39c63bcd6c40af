"""
Review: exact recipients (invariant 3) when an address-list entry is ambiguous.

A header entry such as ``alice@x;bob@y`` or ``<alice@x> <bob@y>`` is one entry to the
gateway's splitter but two recipients to a lenient parser (Python's getaddresses, which the
fake Graph uses as its model of Exchange, and Outlook/Exchange, which treat ``;`` as a
separator).  Kept verbatim, it would deliver to an address that is not an envelope recipient.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from gateway.delivery.graph.mime import HeaderSection, plan_recipients, split_fields

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
