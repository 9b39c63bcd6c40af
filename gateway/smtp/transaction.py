"""
One mail transaction, from MAIL FROM to the reply after DATA: the envelope, the policy chain's
verdicts on it, the spool writer the message streams into, and the judgement at the end of
DATA that decides the reply.

The session (L{gateway.smtp.protocol}) reads the client and owns the connection; it hands the
three transaction commands here and keeps the current L{Transaction}.  What a transaction
needs from its session is spelled out in L{TransactionSession}.

Replies, in the order they are checked:

* MAIL: ``503 5.5.1`` before EHLO/HELO or inside a transaction; ``421 4.3.2`` while the gateway
  drains, ``421 4.7.0`` after ``max_messages_per_session``; ``501``/``555`` for bad syntax or
  parameters; ``552 5.3.4`` for ``SIZE=`` above ``max_message_size``; then the chain's verdict.
* RCPT: ``503 5.5.1`` without MAIL; ``452 4.5.3`` beyond ``max_recipients`` (only
  L{RECIPIENT_OVERSHOOT} of those per transaction escape the error count, so a pipelining
  client with a long list is not disconnected); then the chain's verdict.
* DATA: ``354`` once the spool writer is open (``451``/``452`` when it cannot be); after the
  final dot the intake's refusal, the mail grammar's reading of the header section, the
  end-of-data policies and the sending-mailbox rule each may refuse; else the message is
  committed (fsynced) and only then ``250 2.0.0 Ok: queued as <id>``.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
from typing import Any, Callable, Optional, Protocol

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from gateway.config.model import Limits, ListenerConfig
from gateway.mail.errors import MailRefusal
from gateway.mail.message import choose_sending_mailbox
from gateway.policy.interfaces import MessageView, SessionView
from gateway.smtp import intake as intake_rules
from gateway.smtp.addresses import parse_mail_from, parse_rcpt_to, recipient_key
from gateway.smtp.answers import then
from gateway.smtp.headers import apply_edits, missing_headers, received_header
from gateway.smtp.input import SPOOL_FULL
from gateway.smtp.intake import MessageIntake
from gateway.smtp.replies import Refusal, clean_text, spool_refusal, verdict_refusal
from gateway.smtp.session import SessionReplies
from gateway.spool.entry import Envelope, Provenance
from gateway.spool.interfaces import SpoolError

# Recipients beyond max_recipients get 452 4.5.3 (send them in another transaction, RFC 5321
# §4.5.3.1.10); only this many of those per transaction are free of the error count, so a
# pipelining client with a long list is not disconnected (Postfix's recipient overshoot limit).
RECIPIENT_OVERSHOOT = 1000

#: Header sections up to this size are judged on the reactor thread: about 0.1 ms for a usual
#: header, less than handing it to a thread and back costs (issue 13); bigger ones go to the
#: judge pool so a monstrous header never stalls the other sessions (issue 8).
INLINE_JUDGE_LIMIT = 4096

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.SMTP)


class TransactionSession(SessionReplies, Protocol):
    """What a transaction uses of its SMTP session (L{gateway.smtp.protocol.GatewayESMTP})."""

    factory: Any
    limits: Limits
    listener: ListenerConfig
    chain: Any
    client_name: Optional[str]
    identity: Any
    authenticated: bool
    transaction: Optional["Transaction"]
    messages: int

    @property
    def greeted(self) -> bool: ...
    def client_address(self) -> str: ...
    def pause_reading(self, reason: str) -> None: ...
    def resume_reading(self, reason: str) -> None: ...
    def transaction_opened(self, tx: "Transaction") -> None: ...
    def transaction_closed(self, tx: "Transaction") -> None: ...
    def data_started(self) -> None: ...
    def data_ended(self, rest: bytes) -> None: ...
    def line_too_long_in_data(self) -> None: ...


def mail_parameter_problem(params: dict, max_message_size: int) -> Optional[tuple[int, str, str]]:
    """The reply refusing MAIL FROM's parameters, or None when they are acceptable."""
    for name, value in params.items():
        if name == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                return 501, "5.5.4", "Bad SIZE parameter"
            if int(value) > max_message_size:
                return 552, "5.3.4", "Message size exceeds fixed maximum message size"
        elif name == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                return 555, "5.5.4", "Unsupported BODY type"
        elif name != "AUTH":
            # AUTH= is accepted and ignored (RFC 4954 §5): the session's own login is what counts.
            return 555, "5.5.4", f"Unsupported MAIL parameter {name}"
    return None


def mail_command(session: TransactionSession, rest: bytes) -> None:
    """MAIL FROM: check the session may start a transaction, then ask the chain."""
    if not session.greeted:
        session.reply(503, "5.5.1", "Send EHLO/HELO first")
        return
    if session.transaction is not None:
        session.reply(503, "5.5.1", "Nested MAIL command")
        return
    if session.factory.draining:
        session.reply_and_close(421, "4.3.2", f"{session.hostname} Service shutting down, try again later")
        return
    if session.messages >= session.limits.max_messages_per_session:
        session.reply_and_close(421, "4.7.0", f"{session.hostname} Too many messages in one session")
        return
    argument, problem = parse_mail_from(rest)
    if problem is not None:
        session.refuse(problem)
        return
    assert argument is not None
    bad_parameter = mail_parameter_problem(argument.params, session.limits.max_message_size)
    if bad_parameter is not None:
        session.reply(*bad_parameter)
        return
    sender = argument.address
    view = with_envelope(session.session_view(), sender, ())
    d = maybeDeferred(session.chain.on_mail_from, view, sender)
    session.wait_for(d, lambda result: _mail_result(session, result, sender))


def _mail_result(session: TransactionSession, result: Any, sender: str) -> None:
    refusal = verdict_refusal(result)
    if refusal is not None:
        session.log.info("refused sender from {client}: {code} {status}", client=session.client_label(), code=refusal.code, status=refusal.status)
        session.refuse(refusal)
        return
    session.transaction_opened(Transaction(session, sender))
    session.reply(250, "2.1.0", "Sender ok")


def rcpt_command(session: TransactionSession, rest: bytes) -> None:
    tx = session.transaction
    if tx is None:
        session.reply(503, "5.5.1", "Need MAIL before RCPT")
        return
    tx.rcpt(rest)


def data_command(session: TransactionSession, rest: bytes) -> None:
    tx = session.transaction
    if rest.strip():
        session.reply(501, "5.5.4", "DATA takes no arguments")
        return
    if tx is None:
        session.reply(503, "5.5.1", "Need MAIL command")
        return
    tx.data()


@attrs.define(eq=False)
class Transaction:
    """One mail transaction, from an accepted MAIL FROM to the reply after DATA."""

    session: TransactionSession
    sender: str
    recipients: list = attrs.field(factory=list)
    keys: set = attrs.field(factory=set)
    writer: Any = None
    intake: Optional[MessageIntake] = None
    # "envelope" → "data" (354 sent) → "checking" (end-of-data policies) → "committing" → "done"
    phase: str = "envelope"
    in_flight: bool = False
    client_address: str = ""
    overshoot: int = 0

    # -- RCPT

    def rcpt(self, rest: bytes) -> None:
        session = self.session
        argument, problem = parse_rcpt_to(rest)
        if problem is not None:
            session.refuse(problem)
            return
        assert argument is not None
        if argument.params:
            session.reply(555, "5.5.4", "Unsupported RCPT parameter " + next(iter(argument.params)))
            return
        recipient = argument.address
        key = recipient_key(recipient)
        if key in self.keys:
            session.reply(250, "2.1.5", "Recipient ok (duplicate)")
            return
        if len(self.recipients) >= session.limits.max_recipients:
            self.overshoot += 1
            if self.overshoot <= RECIPIENT_OVERSHOOT:
                session.sendLine(b"452 4.5.3 Too many recipients")
                session.factory.reply_refused(452)
            else:
                session.reply(452, "4.5.3", "Too many recipients")
            return
        d = maybeDeferred(session.chain.on_rcpt_to, session.session_view(), recipient)
        session.wait_for(d, lambda result: self._rcpt_result(result, recipient, key))

    def _rcpt_result(self, result: Any, recipient: str, key: str) -> None:
        session = self.session
        refusal = verdict_refusal(result)
        if refusal is not None:
            session.log.info("refused recipient from {client}: {code} {status}", client=session.client_label(), code=refusal.code, status=refusal.status)
            session.refuse(refusal)
            return
        if self is session.transaction and key not in self.keys:
            self.keys.add(key)
            self.recipients.append(recipient)
        session.reply(250, "2.1.5", "Recipient ok")

    # -- DATA

    def data(self) -> None:
        session = self.session
        if not self.recipients:
            session.reply(554, "5.5.1", "No valid recipients")
            return
        self.client_address = session.client_address()
        self.in_flight = True
        session.factory.transaction_started()
        d = maybeDeferred(session.factory.spool.open_writer)
        session.wait_for(d, self._data_ready, self._data_failed, on_gone=_abort_opened_writer)

    def _data_ready(self, writer: Any) -> None:
        session = self.session
        if self is not session.transaction:
            writer.abort()
            return
        self.writer = writer
        self.phase = "data"
        writer.set_flow_control(lambda: session.pause_reading(SPOOL_FULL), lambda: session.resume_reading(SPOOL_FULL))
        self.intake = MessageIntake(writer, session.limits, self._prefix_maker(writer))
        session.data_started()
        session.sendLine(b"354 End data with <CR><LF>.<CR><LF>")

    def _prefix_maker(self, writer: Any) -> Callable[[set], tuple[bytes, bytes]]:
        """The Received header and the missing Message-ID/Date, as the session is at 354."""
        session, factory = self.session, self.session.factory
        tls, authenticated = session.secure(), session.authenticated

        def make_prefix(names: set) -> tuple[bytes, bytes]:
            now = factory.clock.seconds()
            received = received_header(
                session.client_name, self.client_address, session.hostname, writer.queue_id, tls, authenticated, now, factory.dates)
            added = missing_headers(names, session.hostname, writer.queue_id, now, factory.add_message_id, factory.add_date, factory.dates)
            return received, added

        return make_prefix

    def _data_failed(self, reason: Failure) -> None:
        session = self.session
        session.log.failure("could not open a spool writer for {client}", reason, client=session.client_label())
        session.transaction_closed(self)
        self.end()
        session.refuse(spool_refusal(reason))

    def feed(self, data: bytes) -> None:
        """Bytes read in DATA mode."""
        assert self.intake is not None
        intake, session = self.intake, self.session
        rest = intake.feed(data)
        if intake.line_too_long:
            session.log.info("closing session with {client}: line too long in DATA", client=session.client_label())
            self.discard()
            session.line_too_long_in_data()
            return
        if rest is not None:
            # End of data: whatever followed the final dot is the next pipelined commands.
            session.data_ended(rest)
            self._end_of_data()

    # -- end of DATA

    def _end_of_data(self) -> None:
        session, intake = self.session, self.intake
        assert intake is not None
        if intake.refusal is not None:
            self.discard()
            session.transaction_closed(self)
            self.end()
            self._log_refused(intake.refusal)
            session.refuse(intake.refusal)
            return
        self.phase = "checking"
        session.resume_reading(SPOOL_FULL)
        session.wait_for(self.finish(), self._message_result, self._message_failed, on_gone=self._message_after_disconnect)

    def _log_refused(self, refusal: Any) -> None:
        self.session.log.info(
            "refused message from {client}: {code} {status} {text}",
            client=self.session.client_label(), code=refusal.code, status=refusal.status, text=refusal.text,
        )

    def judge(self, section: bytes, stopped_at: bytes = b"") -> Deferred:
        """The header section judged by the mail grammar; see L{judge_section}."""
        return judge_section(self.session.factory, section, stopped_at)

    def finish(self) -> Deferred:
        """
        Judge the header section once, run the end-of-data policies on that reading, apply
        their header edits, decide the sending mailbox from the final header, then commit the
        message with that decision (ARCHITECTURE "decide once, record, execute").  Fires with
        the committed entry, a L{Refusal}, or None when the transaction was discarded meanwhile.

        No generator, and no callbacks on steps that have answered already (L{then}): with a
        small header and the usual chain every step but the commit answers at once, and this
        runs for every message (issue 13).  An exception in any step fails the Deferred, as a
        callback's would.
        """
        intake = self.intake
        assert intake is not None and intake.header_section is not None
        section, stopped_at = intake.header_section, intake.stopped_at
        return maybeDeferred(lambda: then(self.judge(section, stopped_at), self._judged, _grammar_refused))

    def _judged(self, judged: Any) -> Any:
        if self.phase != "checking":
            return None
        if not _chain_looks_at_messages(self.session.chain):
            return self._commit(judged, None)
        return then(self._ask_chain(judged), self._chain_answered, None, judged)

    def _chain_answered(self, result: Any, judged: Any) -> Any:
        if self.phase != "checking":
            return None
        if isinstance(result, Refusal):
            return result
        edits = tuple(getattr(result, "edits", ()) or ())
        if not edits:
            return self._commit(judged, None)
        intake = self.intake
        assert intake is not None
        header_section = intake.received + apply_edits(intake.client_header_lines, edits) + b"\r\n"
        return then(self.judge(header_section), self._rejudged, _grammar_refused, header_section)

    def _rejudged(self, judged: Any, header_section: bytes) -> Any:
        if self.phase != "checking":
            return None
        return self._commit(judged, header_section)

    def _ask_chain(self, judged: Any) -> Any:
        """The chain's end-of-data verdict: a L{Refusal}, or the result (with its header edits), or a Deferred of either."""
        writer, intake = self.writer, self.intake
        assert intake is not None and intake.header_section is not None
        body = intake.small_body
        if body is not None:
            return self._chain_verdict(judged, _memory_opener(body))
        # Large body: policies read it from the spool's temporary file, once flushed.
        return writer.flush().addCallback(
            lambda _: None if self.phase != "checking"
            else self._chain_verdict(judged, _body_opener(writer.temp_path, len(intake.header_section))))

    def _chain_verdict(self, judged: Any, open_body: Callable[[], Any]) -> Any:
        session, intake = self.session, self.intake
        assert intake is not None and intake.header_section is not None
        view = MessageView(
            # The email package's parse is for configured policies; the guard reads the
            # mail grammar's judgement (``mail``), so a guard-only chain skips it (issue 13).
            headers=_HEADER_PARSER.parsebytes(intake.header_section) if getattr(session.chain, "policies", True) else None,
            header_bytes=intake.header_section,
            size=self.writer.bytes_written,
            open_body=open_body,
            mail=judged,
        )
        d = maybeDeferred(session.chain.on_message, session.session_view(), view)
        return then(d, _refusal_or_result)

    def _commit(self, judged: Any, header_section: Optional[bytes]) -> Any:
        session = self.session
        mailbox = choose_sending_mailbox(judged, self.sender, session.factory.send_as)
        if mailbox is None:
            return Refusal(550, "5.6.0", "Message refused: no From header and a null reverse-path, so no mailbox to send as")
        self.phase = "committing"
        identity = session.identity
        provenance = Provenance(
            client_address=self.client_address,
            client_name=session.client_name or "",
            listener=session.listener.name,
            tls=session.secure(),
            auth_identity=getattr(identity, "login", None),
            credential_ref=getattr(identity, "credential_ref", None),
        )
        return self.writer.commit(Envelope(self.sender, tuple(self.recipients)), provenance, header_section,
                                  sending_mailbox=mailbox)

    def _message_result(self, outcome: Any) -> None:
        session = self.session
        session.transaction_closed(self)
        if outcome is None:
            # Discarded while the policies ran (shutdown): the session is closing already.
            self.end()
            return
        # The final reply goes out before the transaction counts as finished: a graceful stop
        # waiting for it (factory.drain) closes the session as soon as it is, and must not
        # get its 421 in ahead of the 250 (the client would send the message again).
        if isinstance(outcome, Refusal):
            self.discard()
            self._log_refused(outcome)
            session.refuse(outcome)
            self.end()
            return
        self.phase = "done"
        session.messages += 1
        queue_id = getattr(outcome, "queue_id", None) or self.writer.queue_id
        size = getattr(outcome, "size", self.writer.bytes_written)
        # The 250 on the wire first: the client's next command is on its way while the line is logged.
        session.reply(250, "2.0.0", f"Ok: queued as {queue_id}")
        session.flush_replies()
        session.log.info(
            "received {queue_id} from {client} size {size} nrcpt {nrcpt}",
            queue_id=queue_id, client=session.client_label(), size=size,
            nrcpt=len(self.recipients), tls=session.secure(), listener=session.listener.name,
            **{"from": self.sender, "to": [str(r) for r in self.recipients]},
        )
        try:
            session.factory.message_accepted(size)  # before end(): a worker's last report counts it
        except Exception:  # noqa: BLE001 - the message is queued and answered: counting must not undo that
            session.log.failure("counting accepted message {queue_id} failed", queue_id=queue_id)
        self.end()

    def _message_after_disconnect(self, outcome: Any) -> None:
        """The commit was under way when the client left: the message is queued all the same."""
        self.end()
        if outcome is not None and not isinstance(outcome, (Failure, Refusal)):
            self.session.log.info(
                "received {queue_id} from {client} size {size} nrcpt {nrcpt} (client disconnected before the reply)",
                queue_id=getattr(outcome, "queue_id", "?"), client=self.session.client_label(),
                size=getattr(outcome, "size", "?"), nrcpt=len(self.recipients),
            )
        elif isinstance(outcome, Failure) and self.writer is not None:
            self.discard()

    def _message_failed(self, reason: Failure) -> None:
        session = self.session
        session.transaction_closed(self)
        # Also after a failed commit: the writer removes whatever temporary file is left.
        self.discard()
        self.end()
        if reason.check(SpoolError):
            session.log.error(
                "spool refused message {queue_id} from {client}: {error}",
                queue_id=getattr(self.writer, "queue_id", "?"), client=session.client_label(), error=str(reason.value),
            )
        else:
            session.log.failure("message from {client} could not be queued", reason, client=session.client_label())
        session.refuse(spool_refusal(reason))

    # -- ending

    @property
    def receiving(self) -> bool:
        """Between 354 and the end-of-data verdict: a partial message would be lost."""
        return self.phase in ("data", "checking")

    def discard(self) -> None:
        """Throw away the partial message (refused, or the client went away)."""
        writer, self.writer = self.writer, None
        self.phase = "done"
        if writer is not None:
            d = maybeDeferred(writer.abort)
            d.addErrback(lambda f: self.session.log.failure("aborting spool writer failed", f))

    def end(self) -> None:
        """The transaction no longer holds the session: its spool pause and in-flight count go."""
        self.session.resume_reading(SPOOL_FULL)
        if self.in_flight:
            self.in_flight = False
            self.session.factory.transaction_finished()


def judge_section(factory: Any, section: bytes, stopped_at: bytes = b"") -> Deferred:
    """
    The header section judged by the mail grammar (L{intake_rules.judge_header_section}):
    in the factory's ``judge_pool`` (a dedicated pool the wiring provides), so one client's
    monstrous header never stalls the others (issue 8); synchronously when there is none
    (unit tests under a test clock) and for a section of at most L{INLINE_JUDGE_LIMIT}
    bytes — a usual header costs less to judge (~0.1 ms) than the thread hand-off would.
    Fires with the L{MessageHeader} or fails with L{MailRefusal}.
    """
    pool = factory.judge_pool
    if pool is not None and len(section) > INLINE_JUDGE_LIMIT:
        return deferToThreadPool(factory.clock, pool, intake_rules.judge_header_section, section, stopped_at)
    return maybeDeferred(intake_rules.judge_header_section, section, stopped_at)


def with_envelope(view: SessionView, sender: Optional[str], recipients: tuple) -> SessionView:
    """``view`` with this envelope (the constructor: ``attrs.evolve`` inspects the class each call)."""
    return SessionView(
        listener=view.listener, client_address=view.client_address, client_port=view.client_port,
        client_name=view.client_name, tls=view.tls, identity=view.identity,
        trusted_network=view.trusted_network, sender=sender, recipients=recipients,
    )


def _chain_looks_at_messages(chain: Any) -> bool:
    """
    Skip the end-of-data step only when nobody would look: the chain's guard (relay access:
    header From/Sender) must run even when no other policy is configured.
    """
    return bool(getattr(chain, "policies", True)) or getattr(chain, "guard", None) is not None


def _grammar_refused(failure: Failure) -> Refusal:
    """The reply for a header section the mail grammar refused (any other failure goes on)."""
    failure.trap(MailRefusal)
    problem = failure.value
    return Refusal(problem.code, problem.status, clean_text(f"Message refused: {problem.text}"))


def _refusal_or_result(result: Any) -> Any:
    refusal = verdict_refusal(result)
    return refusal if refusal is not None else result


def _abort_opened_writer(writer: Any) -> None:
    """The spool writer opened after its client left."""
    if not isinstance(writer, Failure):
        writer.abort()


def _memory_opener(body: bytes) -> Callable[[], Any]:
    return lambda: io.BytesIO(body)


def _body_opener(path: str, offset: int) -> Callable[[], Any]:
    def open_body() -> Any:
        f = open(path, "rb")
        f.seek(offset)
        return f
    return open_body


__all__ = [
    "Transaction", "TransactionSession", "mail_command", "rcpt_command", "data_command", "mail_parameter_problem",
    "judge_section", "with_envelope", "RECIPIENT_OVERSHOOT", "INLINE_JUDGE_LIMIT",
]
