"""
Steps that have answered already are acted on at once (issue 13): L{gateway.smtp.answers.then}
and the session's L{gateway.smtp.flow.Conversation.wait_for} skip the callback chain of a
Deferred that holds its value, and give the same replies, in the same order, as when the
answer comes later.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.policy.interfaces import Continue, TempFail
from gateway.smtp import commands
from gateway.smtp.answers import has_value, then
from gateway.testing.memory_spool import MemorySpool
from tests.smtp_helpers import DeferredPolicy, ScriptedPolicy, Session, make_factory
from tests.test_smtp_protocol import MESSAGE


class CountingDeferred(Deferred):
    """A Deferred that counts the callbacks added to it."""

    added = 0

    def addCallbacks(self, *args: Any, **kwargs: Any) -> Any:
        self.added += 1
        return super().addCallbacks(*args, **kwargs)


def fired(value: Any) -> CountingDeferred:
    d = CountingDeferred()
    d.callback(value)
    return d


class ThenTests(SynchronousTestCase):

    def test_plain_value_is_handed_on_now(self):
        self.assertEqual(then(2, lambda v, k: v * k, None, 5), 10)

    def test_fired_deferred_gives_the_callback_value_now_without_a_callback(self):
        d = fired(2)
        self.assertEqual(then(d, lambda v, k: v * k, None, 5), 10)
        self.assertEqual(d.added, 0)

    def test_pending_deferred_gets_the_callback(self):
        d: Deferred = Deferred()
        out = then(d, lambda v, k: v * k, None, 5)
        self.assertIs(out, d)
        d.callback(3)
        self.assertEqual(self.successResultOf(out), 15)

    def test_failure_goes_to_the_errback(self):
        out = then(fail(ValueError("no")), lambda v: "value", lambda f: f.trap(ValueError) and "handled")
        self.assertEqual(self.successResultOf(out), "handled")

    def test_failure_without_errback_passes_through(self):
        out = then(fail(ValueError("no")), lambda v: "value")
        self.failureResultOf(out, ValueError)

    def test_has_value(self):
        self.assertTrue(has_value(succeed(1)))
        self.assertFalse(has_value(Deferred()))
        failed = fail(ValueError("no"))
        self.assertFalse(has_value(failed))
        failed.addErrback(lambda f: None)
        chained = succeed(1)
        chained.addCallback(lambda v: Deferred())  # paused on the inner Deferred
        self.assertFalse(has_value(chained))

    def test_a_deferred_running_its_callbacks_has_no_value_to_take(self):
        """A value taken in the middle of the chain would skip the callbacks still to run."""
        d: Deferred = Deferred()
        seen = []

        def look(value: Any) -> Any:
            seen.append(has_value(d))
            return value + 1

        d.addCallback(look)
        d.addCallback(look)
        d.callback(1)
        self.assertEqual(seen, [False, False])
        self.assertTrue(has_value(d))
        self.assertEqual(d.result, 3)



class ScriptedChain:
    """A chain whose MAIL step answers with ``answer()`` (a Deferred), and lets the rest go on."""

    policies = ()
    guard = None

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def on_connect(self, session: Any) -> Deferred:
        return succeed(Continue())

    def on_mail_from(self, session: Any, sender: str) -> Deferred:
        return self.answer(sender)

    def on_rcpt_to(self, session: Any, recipient: str) -> Deferred:
        return succeed(Continue())

    def on_message(self, session: Any, message: Any) -> Deferred:
        return succeed(Continue())


class Unreadable:
    """A verdict whose reading raises: the reply to it is the internal error."""

    @property
    def verdict(self) -> Any:
        raise RuntimeError("unreadable verdict")


CONVERSATION = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\nMAIL FROM:<c@b.test>\r\nRSET\r\nQUIT\r\n"


class FiredAnswerSessionTests(SynchronousTestCase):

    def transcript(self, verdict: Any, later: bool) -> tuple[list[bytes], list[CountingDeferred]]:
        """The replies to CONVERSATION when the MAIL verdict comes fired, or fires later."""
        made: list[CountingDeferred] = []
        pending: list[tuple[Deferred, Any]] = []

        def answer(sender: str) -> Deferred:
            if later:
                d: Deferred = Deferred()
                pending.append((d, verdict))
                return d
            made.append(fired(verdict))
            return made[-1]

        factory = make_factory()
        factory.chain = ScriptedChain(answer)
        s = Session(factory)
        self.addCleanup(s.close)
        lines = s.send(CONVERSATION)
        while pending:
            d, v = pending.pop(0)
            d.callback(v)
            lines += s.lines()
        return lines, made

    def test_fired_verdict_adds_no_callbacks_and_replies_as_a_later_one(self):
        now, made = self.transcript(Continue(), later=False)
        self.assertEqual([d.added for d in made], [0])
        later, _ = self.transcript(Continue(), later=True)
        self.assertEqual(now, later)
        self.assertEqual([line[:3] for line in now if not line.startswith(b"250-")],
                         [b"250", b"250", b"250", b"503", b"250", b"221"])

    def test_fired_refusal_replies_as_a_later_one(self):
        verdict = TempFail(451, "4.7.1", "later")
        now, _ = self.transcript(verdict, later=False)
        later, _ = self.transcript(verdict, later=True)
        self.assertEqual(now, later)
        self.assertIn(b"451 4.7.1 later", now)

    def test_error_acting_on_a_fired_answer_is_an_internal_error_and_the_session_goes_on(self):
        now, _ = self.transcript(Unreadable(), later=False)
        later, _ = self.transcript(Unreadable(), later=True)
        self.assertEqual(now, later)
        self.assertEqual(now.count(b"451 4.3.0 Local error in processing, try again later"), 2)
        self.assertEqual(now[-1][:3], b"221")
        self.flushLoggedErrors(RuntimeError)

    def test_fired_answer_keeps_the_idle_timer(self):
        factory = make_factory(limits={"idle_timeout": 60})
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        self.assertEqual(s.cmd("MAIL FROM:<a@b.test>"), b"250 2.1.0 Sender ok")
        factory.clock.advance(59)
        self.assertFalse(s.closed)
        factory.clock.advance(2)
        self.assertTrue(s.closed)

    def test_a_pending_wait_begun_by_an_answer_that_was_there_keeps_the_input_held(self):
        """
        A handler of an answer that was already there which waits again, for an answer still
        to come: the commands pipelined behind it wait for that reply, and the idle timer does
        not count the wait.  (Before, the first answer's own release let the next command
        through and restarted the idle timer while the second answer was still pending.)
        """
        inner: Deferred = Deferred()

        def xnest(session: Any, rest: bytes) -> None:
            session.wait_for(succeed(None), lambda _: session.wait_for(
                inner, lambda _: session.reply(250, "2.0.0", "nested")))

        commands.COMMANDS[b"XNEST"] = xnest
        self.addCleanup(commands.COMMANDS.pop, b"XNEST")
        factory = make_factory(limits={"idle_timeout": 60})
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        self.assertEqual(s.send(b"XNEST\r\nNOOP\r\n"), [])
        factory.clock.advance(61)
        self.assertFalse(s.closed)
        inner.callback(None)
        self.assertEqual(s.lines(), [b"250 2.0.0 nested", b"250 2.0.0 Ok"])


class SynchronousMessageTests(SynchronousTestCase):
    """End of data with the usual chain: judged and committed without a callback on the way."""

    def run_message(self, policies: tuple) -> tuple[list[bytes], Any]:
        factory = make_factory(policies=policies)
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        lines = s.send(MESSAGE + b".\r\n")
        return lines, factory

    def test_sync_and_async_policies_store_the_same_message(self):
        sync_lines, sync_factory = self.run_message((ScriptedPolicy(),))
        policy = DeferredPolicy(steps=("on_message",))
        factory = make_factory(policies=(policy,))
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        self.assertEqual(s.send(MESSAGE + b".\r\n"), [])
        policy.fire_all()
        async_lines = s.lines()
        self.assertEqual([line[:3] for line in sync_lines], [b"250"])
        self.assertEqual([line[:3] for line in async_lines], [b"250"])
        [(sync_entry, sync_body)] = sync_factory.spool.messages
        [(async_entry, async_body)] = factory.spool.messages
        self.assertEqual(sync_entry.envelope, async_entry.envelope)
        self.assertEqual(sync_entry.sending_mailbox, async_entry.sending_mailbox)

    def test_a_step_that_raises_still_fails_the_message_with_451(self):
        factory = make_factory(policies=(ScriptedPolicy(),))
        factory.spool = CommitRaisingSpool(factory.spool)
        s = Session(factory)
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        self.assertEqual(s.send(MESSAGE + b".\r\n"), [b"451 4.3.0 Local error in processing, try again later"])
        self.assertEqual(factory.spool.inner.messages, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(s.cmd("NOOP"), b"250 2.0.0 Ok")


class CommitRaisingWriter:
    """A spool writer whose commit raises (instead of returning a failed Deferred)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("commit broke")


class CommitRaisingSpool:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def open_writer(self) -> Deferred:
        return self.inner.open_writer().addCallback(CommitRaisingWriter)


class LaterCommitWriter:
    """A spool writer whose commit answers when the test says, as the group commit's thread does."""

    def __init__(self, inner: Any, pending: list) -> None:
        self.inner = inner
        self.pending = pending

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, *args: Any, **kwargs: Any) -> Deferred:
        later: Deferred = Deferred()
        self.pending.append((later, lambda: self.inner.commit(*args, **kwargs)))
        return later


class LaterCommitSpool:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pending: list = []

    def open_writer(self) -> Deferred:
        return self.inner.open_writer().addCallback(LaterCommitWriter, self.pending)

    def commit_now(self) -> None:
        later, commit = self.pending.pop(0)
        commit().chainDeferred(later)


class AcknowledgedOnlyWhenCommittedTests(SynchronousTestCase):
    """Invariant 1 in the session: the 250 after DATA, and what was pipelined behind it, wait for the commit."""

    def test_the_250_waits_for_the_commit_and_keeps_its_place(self):
        spool = LaterCommitSpool(MemorySpool())
        s = Session(make_factory(spool=spool))
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope()
        self.assertEqual(s.cmd("DATA")[:3], b"354")
        self.assertEqual(s.send(MESSAGE + b".\r\nNOOP\r\nQUIT\r\n"), [])
        self.assertEqual(spool.inner.messages, [])
        spool.commit_now()
        lines = s.lines()
        self.assertEqual([line[:3] for line in lines], [b"250", b"250", b"221"])
        self.assertIn(b"queued as MEM", lines[0])
        self.assertEqual(len(spool.inner.messages), 1)


class ReplyBeforeLogLineTests(SynchronousTestCase):
    """The 250 goes out before the "received" line is logged (issue 13): the client's next
    command travels while the line is rendered and written, instead of after it."""

    def test_the_250_is_on_the_wire_when_the_received_line_is_logged(self):
        self.check_250_before_the_line(later=True)  # answered later, as the commit process answers

    def test_also_when_the_commit_answers_at_once(self):
        self.check_250_before_the_line(later=False)

    def check_250_before_the_line(self, later: bool) -> None:
        from twisted.logger import formatEvent, globalLogPublisher

        spool: Any = LaterCommitSpool(MemorySpool()) if later else MemorySpool()
        s = Session(make_factory(spool=spool))
        self.addCleanup(s.close)
        sent_when_logged: list[bytes] = []

        def observe(event: dict) -> None:
            if (formatEvent(event) or "").startswith("received "):
                sent_when_logged.append(s.transport.value())

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        replies = s.send(MESSAGE + b".\r\n")
        if later:
            self.assertEqual(replies, [])
            spool.commit_now()
            replies = s.lines()
        self.assertEqual(replies[0][:3], b"250")
        self.assertEqual(len(sent_when_logged), 1)
        self.assertIn(b"250 2.0.0 Ok: queued as MEM", sent_when_logged[0])

    def test_with_commands_pipelined_behind_it_the_250_shares_their_write(self):
        """The turn's one write stays for a pipelining client: its next commands' replies join the 250."""
        from twisted.internet.testing import StringTransport

        class CountingTransport(StringTransport):
            writes = 0

            def write(self, data: bytes) -> None:
                self.writes += 1
                super().write(data)

        spool = LaterCommitSpool(MemorySpool())
        transport = CountingTransport()
        s = Session(make_factory(spool=spool), transport=transport)
        self.addCleanup(s.close)
        s.ehlo()
        s.envelope()
        s.cmd("DATA")
        self.assertEqual(s.send(MESSAGE + b".\r\nRSET\r\nNOOP\r\n"), [])
        before = transport.writes
        spool.commit_now()
        self.assertEqual([line[:3] for line in s.lines()], [b"250", b"250", b"250"])
        self.assertEqual(transport.writes - before, 1)
