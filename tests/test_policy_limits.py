"""max-recipients and size-limit: lower limits per listener, login or network."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import PolicyConfigError, Reject, TempFail
from gateway.policy.limits import build_max_recipients, build_size_limit
from gateway.testing.policy import make_session, run_transaction

RAW = b"From: a@corp.example\r\nSubject: x\r\n\r\n" + b"x" * 2000 + b"\r\n"


class LimitTests(SynchronousTestCase):
    context = PolicyContext(clock=Clock())

    def test_max_recipients_temporarily_refuses_the_rest(self):
        chain = PolicyChain([build_max_recipients({"max": 2}, self.context)])
        result = self.successResultOf(run_transaction(chain, make_session(), "a@corp.example", ["1@x.example", "2@x.example", "3@x.example"], RAW))
        self.assertEqual(result.accepted_recipients, ("1@x.example", "2@x.example"))
        self.assertTrue(result.allowed)
        verdict = self.successResultOf(chain.on_rcpt_to(make_session(recipients=("1@x.example", "2@x.example")), "3@x.example")).verdict
        self.assertIsInstance(verdict, TempFail)
        self.assertEqual((verdict.code, verdict.status), (452, "4.5.3"))

    def test_max_recipients_per_login_only(self):
        chain = PolicyChain([build_max_recipients({"max": 1, "logins": ["printer@corp.example"]}, self.context)])
        many = ["1@x.example", "2@x.example"]
        printer = self.successResultOf(run_transaction(chain, make_session(login="printer@corp.example"), "a@corp.example", many))
        other = self.successResultOf(run_transaction(chain, make_session(login="alice@corp.example"), "a@corp.example", many))
        self.assertEqual(printer.accepted_recipients, ("1@x.example",))
        self.assertEqual(other.accepted_recipients, tuple(many))

    def test_size_limit_rejects_larger_messages_permanently(self):
        chain = PolicyChain([build_size_limit({"max": "1KiB"}, self.context)])
        result = self.successResultOf(run_transaction(chain, make_session(), "a@corp.example", ["b@x.example"], RAW))
        self.assertEqual(result.step, "message")
        self.assertEqual(result.result.verdict, Reject(552, "5.3.4", "Message too big (at most 1024 bytes)"))
        small = self.successResultOf(run_transaction(chain, make_session(), "a@corp.example", ["b@x.example"], b"Subject: s\r\n\r\nhi\r\n"))
        self.assertTrue(small.allowed)

    def test_size_limit_scoped_to_network(self):
        chain = PolicyChain([build_size_limit({"max": 1024, "networks": ["10.0.0.0/8"]}, self.context)])
        inside = self.successResultOf(run_transaction(chain, make_session("10.0.0.5"), "a@corp.example", ["b@x.example"], RAW))
        outside = self.successResultOf(run_transaction(chain, make_session("192.0.2.5"), "a@corp.example", ["b@x.example"], RAW))
        self.assertFalse(inside.allowed)
        self.assertTrue(outside.allowed)

    def test_invalid_options(self):
        for builder, options, option in [
            (build_size_limit, {}, "max"),
            (build_size_limit, {"max": "lots"}, "max"),
            (build_max_recipients, {"max": 0}, "max"),
            (build_max_recipients, {"max": 3, "maxx": 4}, "maxx"),
        ]:
            e = self.assertRaises(PolicyConfigError, builder, options, self.context)
            self.assertEqual(e.option, option)
