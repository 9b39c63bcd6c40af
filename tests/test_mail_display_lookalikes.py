"""
A display name or comment may not show a reader an address other than the field's own mailbox
(issue 8): that rule read only ASCII ``local@domain.tld``, so the same deception passed when
the address was spelled with an invisible character inside it (U+200B ZERO WIDTH SPACE, U+00AD
SOFT HYPHEN), with a look-alike ``@`` or ``.`` (U+FF20 FULLWIDTH COMMERCIAL AT, U+FF0E
FULLWIDTH FULL STOP), with an internationalised domain, or as an encoded word of any of these.
Found by an adversarial review of this round's fast paths (it predates them); the fast reader
must agree with the general one on every case.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.mail.addresses import addresses_in_text, general_address_list, parse_address_list
from gateway.mail.errors import MalformedHeader
from gateway.mail.message import parse_header_section

SHOWN_ELSEWHERE = [
    '"ceo@corp\u200b.example" <alice@corp.example>',
    '"ceo@co\u200brp.example" <alice@corp.example>',
    '"c\u200beo@corp.example" <alice@corp.example>',
    '"ceo@corp\u00ad.example" <alice@corp.example>',
    "ceo\uff20corp.example <alice@corp.example>",
    '"ceo\uff20corp.example" <alice@corp.example>',
    '"ceo\ufe6bcorp.example" <alice@corp.example>',
    '"ceo@corp\uff0eexample" <alice@corp.example>',
    '"ceo@b\u00fccher.example" <alice@corp.example>',
    "=?utf-8?q?ceo=40corp=E2=80=8B.example?= <alice@corp.example>",
    "=?utf-8?q?ceo=EF=BC=A0corp.example?= <alice@corp.example>",
    "alice@corp.example (ceo@corp\u200b.example)",
    "alice@corp.example (ceo\uff20corp.example)",
]

OWN_OR_PLAIN = [
    '"Alice Example" <alice@corp.example>',
    "J\u00f6rg M\u00fcller <alice@corp.example>",
    "=?utf-8?q?J=C3=B6rg?= <alice@corp.example>",
    "alice@corp.example (Cron Daemon)",
    '"alice\uff20corp.example" <alice@corp.example>',  # its own address, spelled wide: no deception
    '"Team @ Corp" <alice@corp.example>',
    "\u5c71\u7530 \u592a\u90ce <alice@corp.example>",
]


class DisplayNameLookalikeTests(SynchronousTestCase):
    def test_every_lookalike_spelling_is_refused(self) -> None:
        accepted = []
        for value in SHOWN_ELSEWHERE:
            try:
                parse_header_section(("From: " + value + "\r\n").encode("utf-8"))
            except MalformedHeader as e:
                self.assertIn("shows an address", e.text)
                continue
            accepted.append(value)
        self.assertEqual(accepted, [], "display names or comments showing another address were accepted")

    def test_names_showing_nothing_else_stay_accepted(self) -> None:
        for value in OWN_OR_PLAIN:
            header = parse_header_section(("From: " + value + "\r\n").encode("utf-8"))
            self.assertEqual(header.header_sender().canonical, "alice@corp.example")

    def test_the_fast_and_general_readers_agree(self) -> None:
        for value in SHOWN_ELSEWHERE + OWN_OR_PLAIN:
            outcomes = []
            for reader in (parse_address_list, general_address_list):
                try:
                    outcomes.append(("accepted", reader(value, "From")))
                except MalformedHeader as e:
                    outcomes.append(("refused", e.text))
            self.assertEqual(outcomes[0], outcomes[1], value)

    def test_what_a_reader_is_shown(self) -> None:
        self.assertEqual(addresses_in_text("ceo@corp\u200b.example"), ["ceo@corp.example"])
        self.assertEqual(addresses_in_text("ceo\uff20corp\uff0eexample"), ["ceo@corp.example"])
        self.assertEqual(addresses_in_text("ceo@b\u00fccher.example"), ["ceo@b\u00fccher.example"])
        self.assertEqual(addresses_in_text("Team @ Corp"), [])
