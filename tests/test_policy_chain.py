"""The chain runner: order, early exits, async verdicts, header edits and policy bugs."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.chain import PolicyChain
from gateway.policy.headers import apply_edits, header_line
from gateway.policy.interfaces import (
    Accept,
    Continue,
    EditHeaders,
    HeaderEdit,
    Reject,
    TempFail,
)
from gateway.testing.policy import make_message, make_session

RAW = b"From: Printer <printer@corp.example>\r\nSubject: scan\r\nReceived: from internal\r\n\r\nbody\r\n"


class Recording(PolicyBase):
    """Answers with a given verdict (or Deferred) at MAIL FROM and records that it was asked."""

    def __init__(self, name, log, verdict=CONTINUE):
        self.name, self.log, self.verdict = name, log, verdict

    def on_mail_from(self, session, sender):
        self.log.append(self.name)
        return self.verdict


class SeesHeaders(PolicyBase):
    def __init__(self, log):
        self.log = log

    def on_message(self, session, message):
        self.log.append((str(message.headers["From"]), message.headers.get_all("Received")))
        return CONTINUE


class Edits(PolicyBase):
    def __init__(self, *edits):
        self.edits = edits

    def on_message(self, session, message):
        return EditHeaders(tuple(self.edits))


class ChainTests(SynchronousTestCase):
    def mail(self, chain):
        return self.successResultOf(chain.on_mail_from(make_session(), "a@corp.example"))

    def test_empty_chain_allows(self):
        result = self.mail(PolicyChain(()))
        self.assertTrue(result.allowed)
        self.assertEqual(result.verdict, Continue())

    def test_policies_run_in_configured_order(self):
        log = []
        self.mail(PolicyChain([Recording("first", log), Recording("second", log), Recording("third", log)]))
        self.assertEqual(log, ["first", "second", "third"])

    def test_reject_stops_the_chain_and_is_returned(self):
        log = []
        refusal = Reject(550, "5.7.1", "no")
        result = self.mail(PolicyChain([Recording("a", log), Recording("b", log, refusal), Recording("c", log)]))
        self.assertEqual(log, ["a", "b"])
        self.assertFalse(result.allowed)
        self.assertEqual(result.verdict, refusal)

    def test_tempfail_stops_the_chain(self):
        log = []
        result = self.mail(PolicyChain([Recording("a", log, TempFail()), Recording("b", log)]))
        self.assertEqual(log, ["a"])
        self.assertIsInstance(result.verdict, TempFail)

    def test_accept_skips_the_rest_but_allows(self):
        log = []
        result = self.mail(PolicyChain([Recording("a", log, Accept()), Recording("b", log, Reject())]))
        self.assertEqual(log, ["a"])
        self.assertTrue(result.allowed)

    def test_async_verdicts_are_awaited_in_order(self):
        """A later policy is not asked until the earlier one's Deferred has fired."""
        log = []
        first, second = Deferred(), Deferred()
        d = PolicyChain([Recording("a", log, first), Recording("b", log, second), Recording("c", log)]).on_mail_from(
            make_session(), "a@corp.example")
        self.assertEqual(log, ["a"])
        self.assertNoResult(d)
        first.callback(Continue())
        self.assertEqual(log, ["a", "b"])
        self.assertNoResult(d)
        second.callback(Reject(554, "5.7.1", "later"))
        self.assertEqual(log, ["a", "b"])
        self.assertEqual(self.successResultOf(d).verdict, Reject(554, "5.7.1", "later"))

    def test_two_steps_with_pending_verdicts_finish_in_their_own_order(self):
        """Independent steps (pipelined commands) each get their own verdict whenever they fire."""
        slow, fast = Deferred(), Deferred()
        log = []
        d1 = PolicyChain([Recording("slow", log, slow)]).on_mail_from(make_session(), "x@corp.example")
        d2 = PolicyChain([Recording("fast", log, fast)]).on_mail_from(make_session(), "y@corp.example")
        fast.callback(Reject(550, "5.7.1", "fast"))
        self.assertNoResult(d1)
        self.assertEqual(self.successResultOf(d2).verdict.text, "fast")
        slow.callback(Continue())
        self.assertTrue(self.successResultOf(d1).allowed)

    def test_policy_exception_is_a_temporary_failure_never_a_pass(self):
        class Broken(PolicyBase):
            def on_mail_from(self, session, sender):
                raise RuntimeError("bug")

        result = self.mail(PolicyChain([Broken(), Recording("after", [])]))
        self.assertEqual((result.verdict.code, result.verdict.status), (451, "4.3.0"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failed_deferred_is_a_temporary_failure(self):
        d = Deferred()
        chain_d = PolicyChain([Recording("a", [], d)]).on_mail_from(make_session(), "a@corp.example")
        d.errback(ValueError("backend down"))
        self.assertEqual(self.successResultOf(chain_d).verdict.code, 451)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_unknown_verdict_is_a_temporary_failure(self):
        result = self.mail(PolicyChain([Recording("a", [], "yes please")]))
        self.assertEqual(result.verdict.code, 451)

    def test_header_edits_outside_the_message_step_are_ignored(self):
        result = self.mail(PolicyChain([Recording("a", [], EditHeaders((HeaderEdit("add", "X-A", "1"),)))]))
        self.assertTrue(result.allowed)
        self.assertEqual(result.edits, ())


class MessageStepTests(SynchronousTestCase):
    def run_message(self, *policies, raw=RAW):
        return self.successResultOf(PolicyChain(list(policies)).on_message(make_session(), make_message(raw)))

    def test_edits_are_collected_in_chain_order(self):
        a = HeaderEdit("add", "X-One", "1")
        b = HeaderEdit("remove", "Received")
        c = HeaderEdit("replace", "Subject", "new")
        result = self.run_message(Edits(a), Edits(b, c))
        self.assertTrue(result.allowed)
        self.assertEqual(result.edits, (a, b, c))

    def test_later_policies_see_earlier_edits(self):
        seen = []
        self.run_message(
            SeesHeaders(seen),
            Edits(HeaderEdit("replace", "From", "Shared <shared@corp.example>"), HeaderEdit("remove", "Received")),
            SeesHeaders(seen),
        )
        self.assertEqual(seen, [
            ("Printer <printer@corp.example>", ["from internal"]),
            ("Shared <shared@corp.example>", None),
        ])

    def test_edits_before_a_reject_are_reported_with_it(self):
        edit = HeaderEdit("add", "X-A", "1")
        result = self.run_message(Edits(edit), Recording("r", []), type("R", (PolicyBase,), {
            "on_message": lambda self, s, m: Reject(550, "5.7.1", "no")})())
        self.assertFalse(result.allowed)
        self.assertEqual(result.edits, (edit,))

    def test_header_injection_in_an_edit_is_refused(self):
        result = self.run_message(Edits(HeaderEdit("add", "X-A", "ok\r\nBcc: victim@example.org")))
        self.assertEqual(result.verdict.code, 451)
        self.assertEqual(result.edits, ())

    def test_invalid_header_name_or_action_is_refused(self):
        self.assertEqual(self.run_message(Edits(HeaderEdit("add", "Bad Name", "x"))).verdict.code, 451)
        self.assertEqual(self.run_message(Edits(HeaderEdit("prepend", "X-A", "x"))).verdict.code, 451)
        self.assertEqual(self.run_message(Edits(HeaderEdit("replace", "X-A", None))).verdict.code, 451)

    def test_async_message_verdict(self):
        d = Deferred()

        class Later(PolicyBase):
            def on_message(self, session, message):
                return d

        chain_d = PolicyChain([Later()]).on_message(make_session(), make_message(RAW))
        self.assertNoResult(chain_d)
        d.callback(EditHeaders((HeaderEdit("add", "X-Later", "yes"),)))
        self.assertEqual(self.successResultOf(chain_d).edits, (HeaderEdit("add", "X-Later", "yes"),))

    def test_policy_sees_body_stream(self):
        bodies = []

        class ReadsBody(PolicyBase):
            def on_message(self, session, message):
                bodies.append(message.open_body().read())
                return succeed(CONTINUE)

        self.run_message(ReadsBody())
        self.assertEqual(bodies, [b"body\r\n"])


class HeaderHelperTests(SynchronousTestCase):
    def test_apply_edits_does_not_touch_the_original(self):
        message = make_message(RAW)
        edited = apply_edits(message.headers, [HeaderEdit("remove", "Received")])
        self.assertIsNone(edited["Received"])
        self.assertEqual(message.headers["Received"], "from internal")

    def test_header_line_encodes_non_ascii_as_valid_encoded_words(self):
        line = header_line("Subject", "Grüße aus Köln")
        self.assertTrue(line.isascii())
        self.assertTrue(line.endswith(b"\r\n"))
        parsed = make_message(line + b"\r\n")
        self.assertEqual(str(parsed.headers["Subject"]), "Grüße aus Köln")


class GuardTests(SynchronousTestCase):
    """The gateway's own relay policy cannot be skipped and judges the edited headers."""

    def make(self, policies, guard):
        from gateway.policy.chain import PolicyChain
        return PolicyChain(tuple(policies), guard=guard)

    def test_guard_runs_first_and_its_refusal_stops_the_step(self):
        from gateway.policy.interfaces import Reject, SessionView
        asked = []

        class Guard:
            def on_mail_from(self, session, sender):
                asked.append("guard")
                return Reject(554, "5.7.1", "Relay access denied")

        class Other:
            def on_mail_from(self, session, sender):
                asked.append("other")

        result = self.successResultOf(self.make([Other()], Guard()).on_mail_from(SessionView("l", "1.2.3.4", 1), "a@b.example"))
        self.assertEqual(result.verdict.status, "5.7.1")
        self.assertEqual(asked, ["guard"])

    def test_guard_checks_headers_after_edits_even_after_accept(self):
        import email.parser
        import email.policy

        from gateway.policy.interfaces import (
            Accept,
            Continue,
            EditHeaders,
            HeaderEdit,
            MessageView,
            Reject,
            SessionView,
        )

        seen = []

        class Rewrite:
            def on_message(self, session, message):
                return EditHeaders((HeaderEdit("replace", "From", "shared@corp.example"),))

        class AcceptAll:
            def on_message(self, session, message):
                return Accept()

        class Guard:
            def on_message(self, session, message):
                seen.append(str(message.headers["From"]))
                if "shared@corp.example" in str(message.headers["From"]):
                    return Continue()
                return Reject(550, "5.7.1", "not yours")

        headers = email.parser.BytesHeaderParser(policy=email.policy.SMTP).parsebytes(b"From: device@corp.example\r\n\r\n")
        view = MessageView(headers=headers, header_bytes=b"From: device@corp.example\r\n\r\n", size=10, open_body=None)
        session = SessionView("l", "10.0.0.1", 1)
        result = self.successResultOf(self.make([Rewrite(), AcceptAll()], Guard()).on_message(session, view))
        self.assertTrue(result.allowed)
        self.assertEqual(seen, ["shared@corp.example"])
        # Without the rewrite, the device's own From is judged — and refused, Accept or not.
        result = self.successResultOf(self.make([AcceptAll()], Guard()).on_message(session, view))
        self.assertFalse(result.allowed)
        self.assertEqual(seen[-1], "device@corp.example")
