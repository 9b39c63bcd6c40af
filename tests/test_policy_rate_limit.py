"""rate-limit with the in-memory backend: windows on a fake clock, keys, retry hints, bounds."""

from __future__ import annotations

from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.mime import HeaderSection, choose_mailbox, split_fields
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import Continue, PolicyConfigError, TempFail
from gateway.policy.rate_backends import BucketRequest, MemoryBuckets
from gateway.policy.rate_limit import RateLimit, build
from gateway.testing.policy import make_session, run_transaction


def raw_from(address: str) -> bytes:
    return f"From: {address}\r\nSubject: s\r\n\r\nbody\r\n".encode()


class MemoryBucketTests(SynchronousTestCase):
    def test_bucket_refills_over_the_window(self):
        clock = Clock()
        buckets = MemoryBuckets(clock)
        request = BucketRequest("k", capacity=2, window=60, cost=1)
        self.assertTrue(self.successResultOf(buckets.take([request])).allowed)
        self.assertTrue(self.successResultOf(buckets.take([request])).allowed)
        refused = self.successResultOf(buckets.take([request]))
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retry_after, 30.0)
        clock.advance(29)
        self.assertFalse(self.successResultOf(buckets.take([request])).allowed)
        clock.advance(1)
        self.assertTrue(self.successResultOf(buckets.take([request])).allowed)

    def test_take_is_all_or_nothing(self):
        buckets = MemoryBuckets(Clock())
        small = BucketRequest("a", capacity=1, window=60, cost=1)
        big = BucketRequest("b", capacity=10, window=60, cost=1)
        self.assertTrue(self.successResultOf(buckets.take([small])).allowed)
        self.assertFalse(self.successResultOf(buckets.take([small, big])).allowed)
        # "b" was not charged for the refused attempt: all 10 tokens are still there.
        for _ in range(10):
            self.assertTrue(self.successResultOf(buckets.take([big])).allowed)
        self.assertFalse(self.successResultOf(buckets.take([big])).allowed)

    def test_memory_is_bounded_by_evicting_least_recently_used(self):
        buckets = MemoryBuckets(Clock(), max_keys=3)
        for key in "abcd":
            buckets.take([BucketRequest(key, 1, 60, 1)])
        self.assertEqual(len(buckets), 3)
        # "a" was evicted, so it comes back full; "d" is still empty.
        self.assertTrue(self.successResultOf(buckets.take([BucketRequest("a", 1, 60, 1)])).allowed)
        self.assertFalse(self.successResultOf(buckets.take([BucketRequest("d", 1, 60, 1)])).allowed)


class RateLimitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def chain(self, **options):
        return PolicyChain([build(options, PolicyContext(clock=self.clock, listener="submission", key="listener.submission.policies[0]"))])

    def send(self, chain, session=None, sender="a@corp.example", recipients=("b@corp.example",), raw=None):
        return self.successResultOf(run_transaction(chain, session or make_session(login="printer@corp.example"), sender, recipients, raw))

    def test_messages_per_login_per_hour_with_retry_hint(self):
        chain = self.chain(key="login", messages=3, per="1h")
        for _ in range(3):
            self.assertTrue(self.send(chain).allowed)
        refused = self.send(chain)
        self.assertEqual(refused.step, "mail")
        verdict = refused.result.verdict
        self.assertIsInstance(verdict, TempFail)
        self.assertEqual((verdict.code, verdict.status), (451, "4.7.1"))
        # One token comes back every 1200 s.
        self.assertIn("try again in 1200 seconds", verdict.text)
        # Another login has its own budget.
        self.assertTrue(self.send(chain, make_session(login="alice@corp.example")).allowed)
        self.clock.advance(1199)
        self.assertIn("try again in 1 seconds", self.send(chain).result.verdict.text)
        self.clock.advance(1)
        self.assertTrue(self.send(chain).allowed)
        self.assertFalse(self.send(chain).allowed)

    def test_login_limit_ignores_unauthenticated_sessions(self):
        chain = self.chain(key="login", messages=1)
        for _ in range(3):
            self.assertTrue(self.send(chain, make_session()).allowed)

    def test_recipients_are_counted_at_rcpt(self):
        chain = self.chain(key="client-ip", recipients=3, per="10m")
        first = self.send(chain, make_session("192.0.2.7"), recipients=["1@x.example", "2@x.example"])
        self.assertEqual(len(first.accepted_recipients), 2)
        second = self.send(chain, make_session("192.0.2.7"), recipients=["3@x.example", "4@x.example"])
        self.assertEqual(second.accepted_recipients, ("3@x.example",))
        verdict = self.successResultOf(chain.on_rcpt_to(make_session("192.0.2.7"), "5@x.example")).verdict
        self.assertEqual((verdict.code, verdict.status), (451, "4.7.1"))
        self.assertIn("try again in 200 seconds", verdict.text)
        # A different client address is not affected.
        self.assertEqual(len(self.send(chain, make_session("192.0.2.8"), recipients=["1@x.example"]).accepted_recipients), 1)

    def test_client_ipv6_addresses_share_their_64(self):
        chain = self.chain(key="client-ip", messages=1)
        self.assertTrue(self.send(chain, make_session("2001:db8:1:2::10")).allowed)
        self.assertFalse(self.send(chain, make_session("2001:db8:1:2::99")).allowed)
        self.assertTrue(self.send(chain, make_session("2001:db8:1:3::10")).allowed)

    def test_envelope_sender_key_is_case_insensitive(self):
        chain = self.chain(key="sender", messages=1)
        self.assertTrue(self.send(chain, sender="Alerts@corp.example").allowed)
        self.assertFalse(self.send(chain, make_session("198.51.100.1"), sender="alerts@CORP.example").allowed)
        self.assertTrue(self.send(chain, sender="other@corp.example").allowed)

    def test_mailbox_key_counts_message_and_recipients_at_end_of_data(self):
        chain = self.chain(key="mailbox", messages=2, recipients=3, per="1h")
        ok = self.send(chain, recipients=["1@x.example", "2@x.example"], raw=raw_from("Shared <shared@corp.example>"))
        self.assertEqual((ok.step, ok.allowed), ("message", True))
        # Two more recipients would exceed the 3-recipient budget: the whole message waits.
        refused = self.send(chain, recipients=["3@x.example", "4@x.example"], raw=raw_from("shared@corp.example"))
        self.assertEqual((refused.step, refused.allowed), ("message", False))
        self.assertEqual(refused.result.verdict.code, 451)
        # ...and the refused attempt did not use up the message budget.
        self.assertTrue(self.send(chain, recipients=["3@x.example"], raw=raw_from("shared@corp.example")).allowed)
        self.assertTrue(self.send(chain, recipients=["3@x.example"], raw=raw_from("other@corp.example")).allowed)

    def test_mailbox_key_cannot_be_dodged_with_a_broken_from(self):
        chain = self.chain(key="mailbox", messages=1)
        self.assertTrue(self.send(chain, raw=raw_from("garbage")).allowed)
        self.assertFalse(self.send(chain, raw=raw_from("<>")).allowed)

    def test_more_recipients_than_the_budget_takes_the_whole_budget(self):
        chain = self.chain(key="mailbox", recipients=2)
        self.assertTrue(self.send(chain, recipients=["1@x.example", "2@x.example", "3@x.example"], raw=raw_from("s@corp.example")).allowed)
        self.assertFalse(self.send(chain, recipients=["1@x.example"], raw=raw_from("s@corp.example")).allowed)

    def test_scope_limits_only_matching_logins(self):
        chain = self.chain(key="login", messages=1, logins=["printer@corp.example"])
        self.assertTrue(self.send(chain).allowed)
        self.assertFalse(self.send(chain).allowed)
        for _ in range(3):
            self.assertTrue(self.send(chain, make_session(login="alice@corp.example")).allowed)

    def test_custom_text_keeps_the_retry_hint(self):
        chain = self.chain(messages=1, text="Printer quota reached")
        self.send(chain)
        self.assertEqual(self.send(chain).result.verdict.text, "Printer quota reached, try again in 3600 seconds")

    def test_backend_failure_is_a_temporary_failure_or_ignored_when_fail_open(self):
        class Down:
            def take(self, requests):
                return fail(ConnectionError("redis down"))

        closed = RateLimit(backend=Down(), key="login", window=60, name="t", messages=1)
        verdict = self.successResultOf(PolicyChain([closed]).on_mail_from(make_session(login="p@x.example"), "a@x.example")).verdict
        self.assertEqual((verdict.code, verdict.status), (451, "4.3.0"))
        opened = RateLimit(backend=Down(), key="login", window=60, name="t", messages=1, fail_open=True)
        self.assertEqual(self.successResultOf(opened.on_mail_from(make_session(login="p@x.example"), "a@x.example")), Continue())
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 2)

    def test_policy_name_defaults_to_its_configuration_key(self):
        policy = build({"messages": 1}, PolicyContext(clock=self.clock, key="listener.a.policies[2]"))
        self.assertEqual(policy.name, "listener.a.policies[2]")

    def test_invalid_options_name_the_option(self):
        context = PolicyContext(clock=self.clock)
        for options, option in [
            ({}, "messages"),
            ({"messages": 0}, "messages"),
            ({"messages": 1, "key": "hostname"}, "key"),
            ({"messages": 1, "per": "soon"}, "per"),
            ({"messages": 1, "per": 0}, "per"),
            ({"messages": 1, "backend": "memcached"}, "backend"),
            ({"messages": 1, "backend": "redis"}, "backend"),
            ({"messages": 1, "name": "has space"}, "name"),
            ({"messages": 1, "messagez": 2}, "messagez"),
        ]:
            e = self.assertRaises(PolicyConfigError, build, options, context)
            self.assertEqual(e.option, option, (options, str(e)))


# ``rate-limit`` with ``key = "mailbox"`` must count the mailbox Graph really sends
# through.  With several From addresses Graph sends as the Sender (gateway.delivery.graph.mime.
# choose_mailbox); counting the first From let a client rotate it and send without limit through
# one mailbox.
def headers(from_, sender=None):
    text = f"From: {from_}\r\n" + (f"Sender: {sender}\r\n" if sender else "") + "To: t@corp.example\r\n"
    return text.encode()


class MailboxKeyTests(SynchronousTestCase):
    def setUp(self):
        self.chain = PolicyChain([build({"key": "mailbox", "messages": 1, "per": "1h"}, PolicyContext(clock=Clock()))])

    def send(self, raw):
        return self.successResultOf(run_transaction(
            self.chain, make_session(login="app"), "bounce@corp.example", ["t@corp.example"], raw + b"\r\nbody\r\n",
        ))

    def graph_mailbox(self, raw):
        section = HeaderSection(tuple(split_fields(raw)), len(raw), len(raw))
        return choose_mailbox(section, "bounce@corp.example", "header-from")

    def test_several_from_addresses_count_against_the_sender_mailbox(self):
        first = headers("a@corp.example, b@corp.example", "shared@corp.example")
        second = headers("c@corp.example, d@corp.example", "shared@corp.example")
        self.assertEqual(self.graph_mailbox(first), self.graph_mailbox(second))  # one mailbox sends both
        self.assertTrue(self.send(first).allowed)
        refused = self.send(second)
        self.assertEqual(refused.step, "message")
        self.assertIsInstance(refused.result.verdict, TempFail)

    def test_single_from_is_still_the_mailbox(self):
        self.assertTrue(self.send(headers("a@corp.example", "shared@corp.example")).allowed)
        self.assertTrue(self.send(headers("b@corp.example", "shared@corp.example")).allowed)
        self.assertFalse(self.send(headers("A@corp.example")).allowed)


class SpellingTests(SynchronousTestCase):
    """Spellings of one mailbox that address patterns treat alike must share one budget."""

    def test_sender_key_counts_equivalent_spellings_together(self):
        chain = PolicyChain([build({"key": "sender", "messages": 1, "per": "1h"}, PolicyContext(clock=Clock()))])
        first = self.successResultOf(run_transaction(chain, make_session(), "a@corp.example", ["t@corp.example"]))
        self.assertTrue(first.allowed)
        for spelling in ('"a"@corp.example', "A@corp.example.", '"\\a"@Corp.Example'):
            result = self.successResultOf(run_transaction(chain, make_session(), spelling, ["t@corp.example"]))
            self.assertFalse(result.allowed, spelling)
