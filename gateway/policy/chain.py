"""
Runs an ordered list of policies for one step of an SMTP session and combines their verdicts.

Rules: the first L{Reject} or L{TempFail} ends the step with that verdict; L{Accept} ends the
step successfully without asking the rest; header edits from every policy that returns
L{EditHeaders} are collected in chain order.  A policy that raises (or whose Deferred fails) is
logged and turned into a L{TempFail} — a bug in a policy must never bounce mail permanently,
and must never let it through unchecked either.  The same goes for a malformed header edit
(a line break in a value would be header injection).

At the message step each policy sees the headers as the earlier policies' edits left them
(``MessageView.headers`` is an edited copy; ``header_bytes`` stays as received), so a check
placed after a rewrite judges what will actually be delivered.

The ``guard`` is the gateway's own, non-optional policy (relay access: who may relay and as
whom).  No configured policy can skip it: it is asked *first* at connect, MAIL FROM and RCPT
TO, and *last* at the message step — after every header edit, even after an L{Accept} — so it
judges the From/Sender that will really be delivered (a rewrite to a permitted shared mailbox
passes, a rewrite to anything else is refused).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger

from gateway.mail.errors import MailRefusal
from gateway.mail.fields import apply_edits as apply_raw_edits
from gateway.mail.message import MessageHeader, parse_header_section
from gateway.policy.addresses import message_header
from gateway.policy.headers import apply_edits, edit_problem
from gateway.policy.interfaces import (
    Accept,
    Continue,
    EditHeaders,
    HeaderEdit,
    IPolicy,
    MessageView,
    Reject,
    SessionView,
    TempFail,
)

_POLICY_FAILURE = TempFail(451, "4.3.0", "Temporary policy failure, try again later")


def _judge_edited(view: MessageView, edits: tuple[HeaderEdit, ...]) -> Union[MessageHeader, MailRefusal]:
    """
    The view's judged header (L{gateway.mail}) with ``edits`` applied, judged again, so later
    policies and the guard read what will be stored; a refusal is kept and raised to whoever
    reads it (L{gateway.policy.addresses.message_header}).
    """
    try:
        judged = message_header(view)
        return parse_header_section(apply_raw_edits(judged.raw, edits))
    except MailRefusal as refusal:
        return refusal


@attrs.frozen
class StepResult:
    """
    What the chain decided for one step: ``verdict`` is L{Continue} (go ahead), L{Reject} or
    L{TempFail}; ``edits`` are the header edits to apply (message step only).
    """

    verdict: Any
    edits: tuple[HeaderEdit, ...] = ()

    @property
    def allowed(self) -> bool:
        return not isinstance(self.verdict, (Reject, TempFail))


ALLOWED = StepResult(Continue())
_NO_EDITS = StepResult(Continue(), ())


def _guard_alone_result(refusal: Optional[StepResult]) -> StepResult:
    """The message step's result when the guard is the whole chain: its refusal, or go ahead."""
    return _NO_EDITS if refusal is None else StepResult(refusal.verdict, ())


@attrs.define
class PolicyChain:
    """The configured chain of one listener; immutable after start-up."""

    policies: Sequence[IPolicy] = ()
    guard: Optional[IPolicy] = None
    log = Logger()

    def on_connect(self, session: SessionView) -> Deferred:
        return self._guard_first("on_connect", lambda p: p.on_connect(session))

    def on_mail_from(self, session: SessionView, sender: str) -> Deferred:
        return self._guard_first("on_mail_from", lambda p: p.on_mail_from(session, sender))

    def on_rcpt_to(self, session: SessionView, recipient: str) -> Deferred:
        return self._guard_first("on_rcpt_to", lambda p: p.on_rcpt_to(session, recipient))

    def _guard_first(self, step: str, ask: Callable[[IPolicy], Any]) -> Deferred:
        # No generators and no nested Deferreds: this runs three times per message, and with
        # the usual chain (the guard alone, answering synchronously) it is one fired Deferred.
        guard = self.guard
        if guard is None:
            return self._run_policies(step, ask)
        refusal = self._guard_now(guard, step, ask)
        if isinstance(refusal, Deferred):
            return refusal.addCallback(
                lambda refused: refused if refused is not None else self._run_policies(step, ask))
        return succeed(refusal) if refusal is not None else self._run_policies(step, ask)

    def _run_policies(self, step: str, ask: Callable[[IPolicy], Any]) -> Deferred:
        if not self.policies:
            return succeed(ALLOWED)
        return self._run(step, ask)

    def _ask_guard(self, guard: IPolicy, step: str, ask: Callable[[IPolicy], Any]) -> Deferred:
        """Fires with the guard's refusal as a StepResult, or None when it lets the step go on."""
        refusal = self._guard_now(guard, step, ask)
        return refusal if isinstance(refusal, Deferred) else succeed(refusal)

    def _guard_now(self, guard: IPolicy, step: str, ask: Callable[[IPolicy], Any]) -> Any:
        """The guard's refusal as a StepResult, or None — or a Deferred of either, if it answers later."""
        try:
            verdict = ask(guard)
        except Exception:
            self.log.failure("gateway policy {policy!r} failed at {step}", policy=self.guard, step=step)
            return StepResult(_POLICY_FAILURE)
        if isinstance(verdict, Deferred):
            return verdict.addCallbacks(lambda v: self._guard_verdict(step, v),
                                        lambda f: self._guard_failed(step, f))
        return self._guard_verdict(step, verdict)

    def _guard_failed(self, step: str, failure: Any) -> StepResult:
        self.log.failure("gateway policy {policy!r} failed at {step}", failure, policy=self.guard, step=step)
        return StepResult(_POLICY_FAILURE)

    def _guard_verdict(self, step: str, verdict: Any) -> Optional[StepResult]:
        if isinstance(verdict, (Reject, TempFail)):
            return StepResult(verdict)
        if not isinstance(verdict, (Continue, Accept)):
            self.log.error("gateway policy {policy!r} returned {verdict!r} at {step}", policy=self.guard, verdict=verdict, step=step)
            return StepResult(_POLICY_FAILURE)
        return None

    def on_message(self, session: SessionView, message: MessageView) -> Deferred:
        current = [message]

        def edited(edits: tuple[HeaderEdit, ...]) -> None:
            if current[0].headers is None:
                return
            current[0] = attrs.evolve(current[0], headers=apply_edits(current[0].headers, edits),
                                      mail=_judge_edited(current[0], edits))

        guard = self.guard
        if not self.policies:
            if guard is None:
                return succeed(StepResult(Continue(), ()))
            # The guard alone (the usual chain): its answer, without a chain of Deferreds.
            refusal = self._guard_now(guard, "on_message", lambda p: p.on_message(session, message))
            if isinstance(refusal, Deferred):
                return refusal.addCallback(_guard_alone_result)
            return succeed(_guard_alone_result(refusal))
        d = self._run("on_message", lambda p: p.on_message(session, current[0]), edited)
        if guard is None:
            return d

        def then_guard(result: StepResult) -> Any:
            if not result.allowed:
                return result
            checked = self._ask_guard(guard, "on_message", lambda p: p.on_message(session, current[0]))
            return checked.addCallback(lambda refusal: result if refusal is None else StepResult(refusal.verdict, result.edits))

        return d.addCallback(then_guard)

    @inlineCallbacks
    def _run(self, step: str, ask: Callable[[IPolicy], Any], edited: Optional[Callable[[tuple[HeaderEdit, ...]], None]] = None):
        edits: list[HeaderEdit] = []
        for policy in self.policies:
            try:
                verdict = yield maybeDeferred(ask, policy)
            except Exception:
                self.log.failure("policy {policy!r} failed at {step}", policy=policy, step=step)
                return StepResult(_POLICY_FAILURE)
            if isinstance(verdict, (Reject, TempFail)):
                return StepResult(verdict, tuple(edits))
            if isinstance(verdict, Accept):
                break
            if isinstance(verdict, EditHeaders):
                if edited is None:
                    self.log.error("policy {policy!r} returned header edits at {step}; ignored", policy=policy, step=step)
                    continue
                problems = [edit_problem(e) for e in verdict.edits]
                problem = next((p for p in problems if p), None)
                if problem:
                    self.log.error("policy {policy!r} returned a bad header edit: {problem}", policy=policy, problem=problem)
                    return StepResult(_POLICY_FAILURE)
                edits.extend(verdict.edits)
                if verdict.edits and edited is not None:
                    try:
                        edited(tuple(verdict.edits))
                    except Exception:
                        self.log.failure("applying header edits of {policy!r} failed", policy=policy)
                        return StepResult(_POLICY_FAILURE)
            elif not isinstance(verdict, Continue):
                self.log.error("policy {policy!r} returned {verdict!r} at {step}", policy=policy, verdict=verdict, step=step)
                return StepResult(_POLICY_FAILURE)
        return StepResult(Continue(), tuple(edits))


__all__ = ["StepResult", "ALLOWED", "PolicyChain"]
