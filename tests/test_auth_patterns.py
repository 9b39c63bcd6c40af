"""Sender patterns: exact, *@domain, globs, and the ways a glob must not be tricked."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.patterns import PatternError, sender_matches, validate_pattern


class PatternTests(SynchronousTestCase):
    def test_exact_address_case_insensitive(self):
        self.assertTrue(sender_matches("Scanner@Corp.Example", ["scanner@corp.example"]))
        self.assertFalse(sender_matches("scanner2@corp.example", ["scanner@corp.example"]))

    def test_domain_pattern(self):
        self.assertTrue(sender_matches("anyone@corp.example", ["*@corp.example"]))
        self.assertTrue(sender_matches("anyone@CORP.EXAMPLE.", ["*@corp.example"]))
        self.assertFalse(sender_matches("anyone@evilcorp.example", ["*@corp.example"]))
        self.assertFalse(sender_matches("anyone@corp.example.evil", ["*@corp.example"]))

    def test_glob_cannot_cross_the_at_sign(self):
        self.assertTrue(sender_matches("alerts-db@corp.example", ["alerts-*@corp.example"]))
        # the local-part glob must not swallow an "@" and move the domain
        self.assertFalse(sender_matches("alerts-x@evil.example", ["alerts-*@corp.example"]))
        self.assertFalse(sender_matches('"alerts-a@corp.example"@evil.example', ["alerts-*@corp.example"]))

    def test_subdomain_glob(self):
        self.assertTrue(sender_matches("x@mail.corp.example", ["*@*.corp.example"]))
        self.assertFalse(sender_matches("x@corp.example", ["*@*.corp.example"]))

    def test_any(self):
        self.assertTrue(sender_matches("who@ever.example", ["*"]))
        self.assertFalse(sender_matches("who@ever.example", []))

    def test_not_an_address_never_matches_a_real_pattern(self):
        self.assertFalse(sender_matches("nobody", ["*@corp.example"]))
        self.assertFalse(sender_matches("", ["*@*"]))

    def test_validate(self):
        self.assertEqual(validate_pattern(" *@Corp.Example "), "*@corp.example")
        for bad in ("corp.example", "@corp.example", "a@", "a b@c.d", "<a@b.c>", ""):
            self.assertRaises(PatternError, validate_pattern, bad)
