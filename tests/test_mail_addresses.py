"""gateway.mail.addresses and gateway.mail.canonical: the address grammar, its refusals and limits."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.mail.addresses import (
    AddressList,
    Group,
    Mailbox,
    addresses_in_text,
    canonical,
    decode_encoded_word,
    decode_unstructured,
    mailbox_key,
    parse_addr_spec,
    parse_address_list,
)
from gateway.mail.canonical import (
    canonical_address,
    canonical_parts,
    is_dot_atom,
    quote_local,
)
from gateway.mail.errors import LimitExceeded, MailRefusal, MalformedHeader
from gateway.mail.limits import MailLimits


def one(value: str) -> Mailbox:
    items = parse_address_list(value, "To").items
    assert len(items) == 1, items
    return items[0]


class MailboxTests(SynchronousTestCase):
    def test_bare_and_angle_forms(self):
        self.assertEqual(one("a@b.example"), Mailbox("", "a", "b.example"))
        self.assertEqual(one("<a@b.example>"), Mailbox("", "a", "b.example"))
        self.assertEqual(one("Alice <a@b.example>"), Mailbox("Alice", "a", "b.example"))
        self.assertEqual(one("  Alice   Smith  <a@b.example>  "), Mailbox("Alice Smith", "a", "b.example"))

    def test_quoted_display_name_and_local_part(self):
        m = one('"Doe, John" <"j d"@b.example>')
        self.assertEqual((m.display_name, m.local, m.domain), ("Doe, John", "j d", "b.example"))
        self.assertEqual(m.address, '"j d"@b.example')
        self.assertEqual(one('"a\\"b"@x.example').local, 'a"b')
        self.assertEqual(one('"a\\\\b"@x.example').local, "a\\b")
        self.assertEqual(one('"a".b@x.example').local, "a.b")

    def test_obsolete_phrase_with_dots(self):
        self.assertEqual(one("John Q. Public <j@x.example>").display_name, "John Q. Public")
        self.assertEqual(one("A.B <j@x.example>").display_name, "A.B")

    def test_comments_are_ignored_wherever_cfws_may_stand(self):
        self.assertEqual(one("a(x)@b.example (y)"), Mailbox("", "a", "b.example"))
        self.assertEqual(one("(x) Alice (y) <a@b.example>").display_name, "Alice")
        self.assertEqual(one("a@b.example (a (nested) comment)").local, "a")
        self.assertEqual(one("a@b.example (with \\) escaped)").local, "a")
        self.assertEqual(one("a @ b.example").address, "a@b.example")

    def test_domain_literal_and_trailing_dot(self):
        self.assertEqual(one("a@[192.0.2.1]").domain, "[192.0.2.1]")
        self.assertEqual(one("a@B.Example.").domain, "B.Example.")
        self.assertEqual(one("a@b.example.").canonical, "a@b.example")

    def test_encoded_words_in_display_names(self):
        self.assertEqual(one("=?utf-8?q?B=C3=BCro?= <b@x.example>").display_name, "Büro")
        self.assertEqual(one("=?utf-8?b?QsO8cm8=?= <b@x.example>").display_name, "Büro")
        self.assertEqual(one("=?utf-8?q?a?= =?utf-8?q?b?= <b@x.example>").display_name, "ab")
        self.assertEqual(one("=?utf-8?q?a?= x =?utf-8?q?b?= <b@x.example>").display_name, "a x b")
        self.assertEqual(one("=?ISO-8859-1*de?Q?Ger=E4t?= <b@x.example>").display_name, "Gerät")
        self.assertEqual(one("=?utf-8?q?two_words?= <b@x.example>").display_name, "two words")
        self.assertEqual(one('"=?utf-8?q?B=C3=BCro?=" <b@x.example>').display_name, "Büro")
        self.assertEqual(one("x=?utf-8?q?y?= <b@x.example>").display_name, "xy")

    def test_unicode_display_name(self):
        self.assertEqual(one("Jürgen <j@x.example>").display_name, "Jürgen")

    def test_display_name_equal_to_the_address_is_fine(self):
        self.assertEqual(one('"a@b.example" <a@b.example>').display_name, "a@b.example")
        self.assertEqual(one('"A@B.Example" <a@b.example>').address, "a@b.example")
        self.assertEqual(one("a@b.example <A@b.example>").display_name, "a@b.example")
        self.assertEqual(one('"mail a@b.example now" <a@b.example>').address, "a@b.example")

    def test_key_drops_plus_tag(self):
        self.assertEqual(one("A+x@B.example").key, "a@b.example")
        self.assertEqual(one("A+x@B.example").canonical, "a+x@b.example")
        self.assertEqual(one("+x@b.example").key, "+x@b.example")
        self.assertEqual(one("a+@b.example").key, "a@b.example")
        self.assertEqual(one("a@b.example").key, "a@b.example")


class ListTests(SynchronousTestCase):
    def test_lists_groups_and_empty_entries(self):
        parsed = parse_address_list('a@x.example, "S, J" <b@y.example>, Team: c@z.example, d@z.example;, undisclosed-recipients:;')
        self.assertEqual([m.address for m in parsed.mailboxes], ["a@x.example", "b@y.example", "c@z.example", "d@z.example"])
        self.assertEqual(parsed.groups, (Group("Team", (Mailbox("", "c", "z.example"), Mailbox("", "d", "z.example"))), Group("undisclosed-recipients")))
        self.assertEqual(len(parsed.items), 4)
        self.assertEqual(parse_address_list("a@x.example,,b@x.example,").mailboxes[1].local, "b")
        self.assertEqual(parse_address_list("").items, ())
        self.assertEqual(parse_address_list("G: , a@x.example ,;").groups[0].members, (Mailbox("", "a", "x.example"),))
        self.assertEqual(AddressList().mailboxes, ())

    def test_group_with_quoted_name(self):
        self.assertEqual(parse_address_list('"My Team": a@x.example;').groups[0].name, "My Team")

    def assertRefused(self, value, fragment, kind=MalformedHeader, limits=MailLimits()):
        e = self.assertRaises(MailRefusal, parse_address_list, value, "To", limits)
        self.assertIsInstance(e, kind)
        self.assertIn(fragment, e.text)
        self.assertTrue(e.text.startswith("To") or e.text.startswith("more than"), e.text)
        return e

    def test_a_comment_that_shows_another_address_is_refused(self):
        # ``addr (Full Name)`` is the old way to write a display name, and many readers still
        # show the comment as the sender's name: a comment showing another mailbox is the
        # same deception as a display name that does (found with
        # ``From: scanner@corp.example (ceo@corp.example)``, which reached Graph unchanged).
        self.assertRefused("alice@corp.example (ceo@corp.example)", "a comment shows an address")
        self.assertRefused("(ceo@corp.example) alice@corp.example", "a comment shows an address")
        self.assertRefused("Alice <alice@corp.example> (=?utf-8?q?ceo=40corp.example?=)", "a comment shows an address")
        self.assertRefused("alice@corp.example (a (ceo@corp.example) b)", "a comment shows an address")
        # The mailbox's own address in a comment, or one of the list's others, deceives no one.
        self.assertEqual(one("alice@corp.example (Alice@corp.example)").address, "alice@corp.example")
        self.assertEqual(len(parse_address_list("a@x.example (b@y.example), b@y.example", "To").mailboxes), 2)

    def test_ambiguous_forms_are_refused(self):
        self.assertRefused("victim@x.example, outsider@evil.example:;", "unexpected ':'")
        self.assertRefused("a@b.example;c@d.example", "unexpected ';'")
        self.assertRefused("<a@b.example> <c@d.example>", "unexpected '<'")
        self.assertRefused('"ceo@corp.example" <alice@corp.example>', "display name shows an address")
        self.assertRefused("=?utf-8?q?ceo=40corp.example?= <alice@corp.example>", "display name shows an address")
        self.assertRefused('"=?utf-8?q?ceo=40corp.example?=" <alice@corp.example>', "display name shows an address")
        self.assertRefused("ceo@corp.example <alice@corp.example>", "display name shows an address")
        self.assertRefused('"ceo@corp.example": a@b.example;', "group name that shows an address")
        self.assertRefused("<@route.example:x@evil.example>", "source routes")
        self.assertRefused("John Smith@x.example", "several words")
        self.assertRefused("undisclosed", "a name without an address")
        self.assertRefused("<>", "an empty address")
        self.assertRefused("Name <a@b.example", "missing '>'")
        self.assertRefused("a@b.example <c@b.example", "missing '>'")
        self.assertRefused("G: a@b.example", "closing ';'")
        self.assertRefused("G: a@b.example c", "closing ';'")
        self.assertRefused("G: H: a@b.example;;", "a group inside a group")
        self.assertRefused("a.b.@x.example", "ending in '.'")
        self.assertRefused(".a@x.example", "malformed local part")
        self.assertRefused("a..b@x.example", "malformed local part")
        self.assertRefused("a@", "without a domain")
        self.assertRefused("a@b..example", "unexpected '.'")
        self.assertRefused("a@-b.example", "malformed domain label")
        self.assertRefused("a@b.ex ample", "unexpected 'ample'")
        self.assertRefused("a@b.example x", "unexpected 'x'")
        self.assertRefused("a@b@c.example", "unexpected '@'")
        self.assertRefused("<a>", "without '@domain'")
        self.assertRefused("a@<b>", "malformed domain")
        self.assertRefused("@b.example", "an address without a local part")
        self.assertRefused(": a@b.example;", "plain phrase")
        self.assertRefused(".x: a@b.example;", "plain phrase")
        self.assertRefused(">", "unexpected '>'")

    def test_syntax_errors(self):
        self.assertRefused('"unterminated <a@b.example>', "unterminated or invalid quoted string")
        self.assertRefused("a@[192.0.2.1", "domain literal")
        self.assertRefused("(unterminated a@b.example", "unterminated comment")
        self.assertRefused("((nested) a@b.example", "unterminated comment")
        self.assertRefused("a@b.example)", "unexpected character ')'")
        self.assertRefused("a\\b@x.example", "unexpected character '\\\\'")
        self.assertRefused("a\x01b@x.example", "unexpected")
        self.assertRefused("a@b.example\r\nBcc: x@y.example", "line break")
        self.assertRefused("a@b.example\x00", "NUL")
        self.assertRefused("a@b.example\n", "line break")

    def test_addresses_must_be_ascii_and_free_of_encoded_words(self):
        self.assertRefused("jürgen@x.example", "non-ASCII address")
        self.assertRefused("j@exämple.example", "non-ASCII domain")
        self.assertRefused("j@[exämple]", "non-ASCII domain literal")
        self.assertRefused("=?utf-8?q?ceo?=@corp.example", "an encoded word in an address")
        self.assertEqual(one('"a\tb"@x.example').local, "a\tb")  # folding white space is quoted text
        self.assertRefused('"a\x01b"@x.example', "invalid quoted string")

    def test_encoded_words_that_hide_line_breaks_or_are_broken(self):
        self.assertRefused("=?utf-8?q?a=0D=0Ab?= <a@b.example>", "line break or NUL")
        self.assertRefused("=?utf-8?q?a=00b?= <a@b.example>", "line break or NUL")
        self.assertRefused("=?utf-8?b?YQpi?= <a@b.example>", "line break or NUL")
        self.assertRefused("=?x-no-such-charset?q?a?= <a@b.example>", "unknown charset")
        # Junk in base64 is skipped, as every lenient reader does.
        self.assertEqual(one("=?utf-8?b?%%%?= <a@b.example>").display_name, "")
        self.assertRefused("=?utf-8?q?ceo=40corp.example?= <alice@corp.example>", "display name shows an address")

    def test_local_part_and_domain_lengths(self):
        self.assertEqual(len(one("a" * 64 + "@x.example").local), 64)
        self.assertRefused("a" * 65 + "@x.example", "longer than 64")
        label = "b" * 63
        domain = ".".join([label] * 4)[:253]
        self.assertEqual(one(f"a@{domain}").domain, domain)
        long_domain = ".".join([label] * 4) + ".cc"
        self.assertEqual(len(long_domain), 258)
        self.assertRefused(f"a@{long_domain}", "longer than 255")
        self.assertEqual(len(one("a@" + "b" * 251 + ".cde").domain), 255)
        self.assertRefused("a@" + "b" * 252 + ".cde", "longer than 255")

    def test_address_limit(self):
        limits = MailLimits(max_addresses=3)
        self.assertEqual(len(parse_address_list("a@x.example, b@x.example, c@x.example", "To", limits).items), 3)
        e = self.assertRefused("a@x.example, b@x.example, c@x.example, d@x.example", "more than 3 addresses in the To header", LimitExceeded, limits)
        self.assertEqual((e.code, e.status), (552, "5.3.4"))
        self.assertEqual(len(parse_address_list("G: a@x.example, b@x.example, c@x.example;", "To", limits).mailboxes), 3)
        self.assertRefused("G: a@x.example, b@x.example, c@x.example, d@x.example;", "more than 3 addresses", LimitExceeded, limits)

    def test_encoded_word_limit(self):
        limits = MailLimits(max_encoded_words=3)
        self.assertEqual(one_with("=?utf-8?q?a?= =?utf-8?q?b?= =?utf-8?q?c?= <a@b.example>", limits).display_name, "abc")
        self.assertRefused("=?utf-8?q?a?= =?utf-8?q?b?= =?utf-8?q?c?= =?utf-8?q?d?= <a@b.example>",
                           "more than 3 encoded words in the To header", LimitExceeded, limits)

    def test_comment_depth_limit(self):
        limits = MailLimits(max_comment_depth=3)
        self.assertEqual(one_with("a@b.example (1(2(3)))", limits).local, "a")
        self.assertRefused("a@b.example (1(2(3(4))))", "comment nesting deeper than 3", MalformedHeader, limits)

    def test_token_limit(self):
        limits = MailLimits(max_tokens=5)
        self.assertEqual(one_with("a@b.example", limits).local, "a")  # a @ b . example: 5 tokens
        self.assertRefused("a@b.example.x", "more than 5 words and symbols in the To header", LimitExceeded, limits)


def one_with(value: str, limits: MailLimits) -> Mailbox:
    return parse_address_list(value, "To", limits).items[0]


class AddrSpecTests(SynchronousTestCase):
    def test_one_bare_address(self):
        self.assertEqual(parse_addr_spec(" <A@B.example> ").address, "A@B.example")
        self.assertEqual(parse_addr_spec('"a b"@x.example').local, "a b")
        for bad in ("", "a", "a@b.example c@d.example", "Name <a@b.example>", "a@b.example\r\nx", "x" * 321, "<>", "a@b.example\x00"):
            self.assertRaises(MailRefusal, parse_addr_spec, bad)
        self.assertEqual(parse_addr_spec("a" * 64 + "@" + "b" * 251 + ".cde").local, "a" * 64)

    def test_canonical_and_key(self):
        self.assertEqual(canonical('"Bob"@Corp.Example.'), "bob@corp.example")
        self.assertEqual(canonical('"a b"@X.example'), '"a b"@x.example')
        self.assertIsNone(canonical("not an address"))
        self.assertEqual(mailbox_key("Bob+News@corp.example"), "bob@corp.example")
        self.assertIsNone(mailbox_key("nope"))


class CanonicalTests(SynchronousTestCase):
    def test_forms(self):
        self.assertTrue(is_dot_atom("a.b+c"))
        self.assertFalse(is_dot_atom("a b"))
        self.assertFalse(is_dot_atom("a..b"))
        self.assertFalse(is_dot_atom(""))
        self.assertEqual(quote_local("a.b"), "a.b")
        self.assertEqual(quote_local('a "b\\'), '"a \\"b\\\\"')
        self.assertEqual(canonical_parts("Ab", "X.Example."), ("ab", "x.example"))
        self.assertEqual(canonical_parts("a", "x.example.."), ("a", "x.example.."))
        self.assertEqual(canonical_address("A B", "X."), '"a b"@x')


class HelperTests(SynchronousTestCase):
    def test_addresses_in_text(self):
        self.assertEqual(addresses_in_text("write to ceo@corp.example or x@y.example."), ["ceo@corp.example", "x@y.example"])
        self.assertEqual(addresses_in_text("at @ home"), [])
        self.assertEqual(addresses_in_text("a@localhost"), [])
        self.assertEqual(addresses_in_text("(a@b.example)"), ["a@b.example"])
        self.assertEqual(addresses_in_text("x" * 100 + "@b.example"), ["x" * 64 + "@b.example"])
        self.assertEqual(addresses_in_text("@b.example"), [])

    def test_decode_unstructured(self):
        self.assertEqual(decode_unstructured("=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?="), "Grüße aus Köln")
        self.assertEqual(decode_unstructured("a =?utf-8?q?x?= \t =?utf-8?q?y?= b"), "a xy b")
        self.assertEqual(decode_unstructured("=?utf-8?q?x?= and =?utf-8?q?y?="), "x and y")
        self.assertEqual(decode_unstructured("=?no-such?q?x?= z"), "=?no-such?q?x?= z")
        self.assertEqual(decode_unstructured("=?utf-8?q?a=0D=0Ab?="), "a\r\nb")
        self.assertEqual(decode_unstructured("plain"), "plain")

    def test_decode_encoded_word(self):
        self.assertEqual(decode_encoded_word("utf-8", "Q", "a_b=3F", "To"), "a b?")
        self.assertEqual(decode_encoded_word("utf-8", "B", "YWI", "To"), "ab")
        self.assertEqual(decode_encoded_word("iso-8859-1", "q", "=E4", "To"), "ä")


class BoundaryTests(SynchronousTestCase):
    """Cases chosen to tell a correct grammar from a slightly wrong one (mutation testing)."""

    def test_escapes_inside_nested_comments(self):
        self.assertEqual(one("a@b.example (x (y\\) z) w)").local, "a")
        self.assertEqual(one("(x (y\\( z) w) a@b.example").local, "a")
        self.assertRaises(MailRefusal, parse_address_list, "a@b.example (x (y\\) z w)")

    def test_unquoted_address_as_display_name_is_followed_by_more(self):
        parsed = parse_address_list("a@x.example <a@x.example>, b@y.example")
        self.assertEqual([m.address for m in parsed.mailboxes], ["a@x.example", "b@y.example"])
        self.assertRaises(MailRefusal, parse_address_list, "a@x.example <@r.example:a@x.example>")

    def test_decoding_edge_cases(self):
        self.assertEqual(one("=?utf-8?q?=FF?= <a@b.example>").display_name, "\ufffd")
        self.assertEqual(one("=?utf-8?q?\u00e9?= <a@b.example>").display_name, "?")
        self.assertEqual(one("=?utf-8?B?YWI?= <a@b.example>").display_name, "ab")
        self.assertEqual(one("=?utf-8?b?YQ?= <a@b.example>").display_name, "a")
        self.assertRaises(MailRefusal, parse_address_list, "=?utf-8?q?a=0Db?= <a@b.example>")
        self.assertRaises(MailRefusal, parse_address_list, "=?utf-8?b?YQ1i?= <a@b.example>")
        double = "=?utf-8?q?=3D=3Futf-8=3Fq=3Fceo=3D40corp=2Eexample=3F=3D?= <a@b.example>"
        self.assertRaises(MailRefusal, parse_address_list, double)

    def test_addresses_in_text_boundaries(self):
        self.assertEqual(addresses_in_text("@ ceo@corp.example"), ["ceo@corp.example"])
        self.assertEqual(addresses_in_text("a@" + "b" * 300 + ".example"), [])
        self.assertEqual(addresses_in_text("a@" + "b" * 251 + ".cdef"), ["a@" + "b" * 251 + ".cde"])
        self.assertEqual(addresses_in_text("a@" + "b" * 252 + ".cd"), ["a@" + "b" * 252 + ".cd"])
        self.assertEqual(addresses_in_text("x@y.example a@b.example"), ["x@y.example", "a@b.example"])


class MoreBoundaryTests(SynchronousTestCase):
    def test_spacing_of_display_names(self):
        self.assertEqual(one("Alice(c)Smith <a@b.example>").display_name, "Alice Smith")
        self.assertEqual(one('"A" "B" <a@b.example>').display_name, "A B")
        self.assertEqual(one('"A""B" <a@b.example>').display_name, "AB")
        self.assertEqual(one("John Q . Public <j@x.example>").display_name, "John Q . Public")
        self.assertEqual(one("John Q. Public <j@x.example>").display_name, "John Q. Public")

    def test_token_limit_is_exact(self):
        limits = MailLimits(max_tokens=5)
        self.assertEqual(one_with("a@b.example  ", limits).local, "a")
        self.assertRaises(LimitExceeded, parse_address_list, "a@b.example.", "To", limits)
        self.assertRaises(LimitExceeded, parse_address_list, "a@b.example,", "To", limits)

    def test_literal_domain_then_more(self):
        parsed = parse_address_list("a@[192.0.2.1], b@x.example")
        self.assertEqual([m.domain for m in parsed.mailboxes], ["[192.0.2.1]", "x.example"])

    def test_bare_address_edges(self):
        self.assertRaises(MailRefusal, parse_addr_spec, "<a@b.example")
        self.assertRaises(MailRefusal, parse_addr_spec, "a@b.example>")
        for hidden in ("\r", "\n", "\x00"):
            self.assertRaises(MailRefusal, parse_addr_spec, f"a@b.example (x{hidden}y)")
            self.assertRaises(MailRefusal, parse_address_list, f"a@b.example (x{hidden}y)")
        self.assertEqual(parse_addr_spec("a@b.example (comment)").address, "a@b.example")


class LenientDecodingTests(SynchronousTestCase):
    def test_unstructured_edges(self):
        self.assertEqual(decode_unstructured("  =?utf-8?q?x?="), "  x")
        self.assertEqual(decode_unstructured("=?utf-8?q?a_b?="), "a b")
        self.assertEqual(decode_unstructured("=?utf-8?q?\u00e9?="), "?")
        self.assertEqual(decode_unstructured("=?utf-8?q?=FF?="), "\ufffd")
        self.assertEqual(decode_unstructured("=?utf-8?B?QsO8cm8=?= x"), "Büro x")

    def test_quoted_base64_display_name(self):
        self.assertEqual(one('"=?utf-8?b?QsO8cm8=?=" <b@x.example>').display_name, "Büro")

    def test_token_limit_with_a_special_last(self):
        self.assertEqual(len(parse_address_list("a@b.example,", "To", MailLimits(max_tokens=6)).items), 1)
