"""
The common-shape parser of MAIL FROM / RCPT TO arguments (issue 13) against the general one:
on a generated corpus of well-formed, borderline and broken arguments, ``parse_mail_from``
and ``parse_rcpt_to`` give exactly what the general parser gives (the same address and
parameters, or the same refusal), and the common shape really is answered by the fast path.
"""

from __future__ import annotations

import itertools
import random
import re

from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp import addresses
from gateway.smtp.addresses import _parse_path_argument, parse_mail_from, parse_rcpt_to

LOCALS = [
    b"a", b"alice", b"a.b", b"a.b.c", b"first.last+tag", b"o'hara", b"x_y-z", b"!#$%&'*+/=?^_`{|}~-",
    b".a", b"a.", b"a..b", b"", b"a b", b'"quoted"', b'"a b"', b'"a\\"b"', b"a\"b", b"a\\b", b"a(b)",
    b"a,b", b"a:b", b"a;b", b"a[b", b"a<b", b"a>b", b"a@b", b"l" * 64, b"l" * 65, b"\xc3\xa9t\xc3\xa9",
    b"a\x00b", b"a\tb", b"\xff",
]
DOMAINS = [
    b"example.com", b"b", b"EXAMPLE.COM", b"x_y.example", b"a-b.example", b"-a.example", b"a-.example",
    b"a..example", b".example", b"example.", b"example..", b"", b"1.2.3.4", b"[192.0.2.1]",
    b"[IPv6:2001:db8::1]", b"[300.1.1.1]", b"exa mple.com", b"ex@mple.com", b"l" * 63 + b".com",
    b"l" * 64 + b".com", b".".join([b"d" * 60] * 4) + b".c", b".".join([b"d" * 63] * 4),
    b"\xc3\xa9xample.com", b"a_", b"_a", b"a-", b"exa\"mple",
]
TAILS = [
    b"", b" ", b"  ", b" SIZE=1000", b" size=1000", b" SIZE=x", b" SIZE", b" BODY=8BITMIME", b" SIZE=1 SIZE=2",
    b" AUTH=<>", b" AUTH=a@b", b" X=\xc3\xa9", b"\tSIZE=10", b" SMTPUTF8", b" =x", b" A=b=c", b"junk", b">", b" \r",
]
SHAPES = [b"<%s@%s>", b" <%s@%s>", b"\t<%s@%s>", b"<%s@%s", b"%s@%s", b"< %s@%s>", b"<%s@%s >",
          b"<@relay.example:%s@%s>", b"<<%s@%s>>"]


def general_mail_from(rest: bytes):
    return _parse_path_argument(rest, b"FROM:", "5.1.7", allow_null=True)


def general_rcpt_to(rest: bytes):
    return _parse_path_argument(rest, b"TO:", "5.1.3", allow_null=False)


def corpus():
    for local, domain in itertools.product(LOCALS, DOMAINS):
        yield b"<%s@%s>" % (local, domain)
    for shape, tail in itertools.product(SHAPES, TAILS):
        yield shape % (b"alice", b"example.com") + tail
    yield from (b"<>", b"<> SIZE=10", b"", b" ", b"<", b">", b"<a@b.c>" * 2)
    # Random arguments from the characters that matter to either parser.
    rng = random.Random(13)
    alphabet = b"aZ09._-@<>\" \t\\:[],+=()!#\xc3\x80"
    for _ in range(4000):
        size = rng.randrange(1, 30)
        body = bytes(rng.choice(alphabet) for _ in range(size))
        yield b"<" + body + b">" if rng.random() < 0.7 else body


class FastPathDifferentialTests(SynchronousTestCase):

    def check(self, parse, general, prefixes):
        fast_answers = 0
        real = addresses._parse_path_argument
        calls = []

        def counting(*args, **kwargs):
            calls.append(args)
            return real(*args, **kwargs)

        self.patch(addresses, "_parse_path_argument", counting)
        for argument in corpus():
            for prefix in prefixes:
                rest = prefix + argument
                before = len(calls)
                self.assertEqual(parse(rest), general(rest), rest)
                if len(calls) == before:
                    fast_answers += 1
        return fast_answers

    def test_mail_from_matches_the_general_parser(self):
        answered = self.check(parse_mail_from, general_mail_from, (b"FROM:", b"from:", b"From:", b"TO:", b"FROM", b"FROM :"))
        self.assertGreater(answered, 300)

    def test_rcpt_to_matches_the_general_parser(self):
        answered = self.check(parse_rcpt_to, general_rcpt_to, (b"TO:", b"to:", b"To:", b"FROM:", b"TO", b"TO :"))
        self.assertGreater(answered, 300)

    def test_common_shapes_take_the_fast_path(self):
        calls = []
        self.patch(addresses, "_parse_path_argument", lambda *a, **kw: calls.append(a))
        for rest in (b"FROM:<alice@example.com>", b"from: <a.b+c@x_y.example.> SIZE=10240 BODY=8BITMIME"):
            argument, problem = parse_mail_from(rest)
            self.assertIsNone(problem)
        argument, problem = parse_rcpt_to(b"TO:<bob@example.com>")
        self.assertEqual((argument.address, argument.params, problem), ("bob@example.com", {}, None))
        self.assertEqual(calls, [])

    def test_limits_are_the_general_parsers(self):
        local64 = b"l" * 64
        domain = b".".join([b"d" * 62] * 3) + b"." + b"e" * 50  # path of 64 + 1 + 239 = 304 > 256
        self.assertEqual(parse_rcpt_to(b"TO:<" + local64 + b"@" + domain + b">")[1].text, "Address too long")
        self.assertEqual(parse_rcpt_to(b"TO:<" + local64 + b"l@example.com>")[1].text, "Local part too long")
        self.assertEqual(parse_rcpt_to(b"TO:<" + local64 + b"@example.com>")[0].address, local64.decode() + "@example.com")


_REFERENCE_LABEL = re.compile(rb"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


def reference_valid_domain(name: bytes) -> bool:
    """valid_domain as it was, one label at a time: the specification of the one-pattern version."""
    if name.endswith(b"."):
        name = name[:-1]
    if not name or len(name) > 255:
        return False
    return all(_REFERENCE_LABEL.match(label) for label in name.split(b"."))


class ValidDomainDifferentialTests(SynchronousTestCase):

    def test_matches_the_label_by_label_check(self):
        names = list(DOMAINS) + [b".", b"..", b"a", b"a.b.", b"a..", b"a" * 63, b"a" * 64, b"-", b"_", b"a\n",
                                 b"a.b\n", b"\na", b"a.-b", b"a_.b_"]
        names += [b".".join([b"d" * 63] * 3) + b"." + b"e" * k + tail for k in (59, 60, 61, 62, 63) for tail in (b"", b".")]
        rng = random.Random(5321)
        alphabet = b"aZ09-_.\n \xc3"
        names += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 20))) for _ in range(5000)]
        for name in names:
            self.assertEqual(addresses.valid_domain(name), reference_valid_domain(name), name)
            helo = name.strip(b" \t")
            if helo[:1] != b"[":
                expected = helo.decode("ascii") if helo.isascii() and reference_valid_domain(helo) else None
                self.assertEqual(addresses.parse_helo(name), expected, name)
        self.assertTrue(any(addresses.valid_domain(name) for name in names[-5000:]))
