"""
The floor for ``compare_postfix.py --lean-checks`` (``plain_twisted.py --lean --gateway-spool
--checks``): the lean ``Protocol`` on graphsmtp's spool doing graphsmtp's own checks of each
message, and none of the session around them.

Why: with one connection graphsmtp stays below Postfix while the lean ``Protocol`` on the same
spool passes it, and the difference is graphsmtp's SMTP session.  This floor splits that
difference in two: what the checks cost (they must stay) and what the session's machinery
costs (docs/benchmarks.md, "What one connection's gap is made of").

Done with graphsmtp's own code: the HELO name and the MAIL and RCPT arguments parsed
(L{gateway.smtp.addresses}, the MAIL parameters too); the relay guard asked at MAIL, RCPT and
the end of the data (a L{PolicyChain} of the guard alone, graphsmtp's usual chain); the order of
the transaction's commands (503 out of order, 554 for DATA without recipients) and duplicate
recipients; the data through L{MessageIntake} (the framing checks, the header section, the
``Received:`` line, a missing Message-ID and Date) into a spool writer, aborted on every way a
message can fail; the header section judged by the mail grammar; the sending mailbox chosen
(550 without one); the commit with the envelope and provenance; the log line, through the
daemon's own observers.  Not done: the state machine beyond that order, ordered replies and
back-pressure for pipelined input (the lean ``Protocol`` acts on one command at a time), timers,
the session's limits (commands, errors, recipients, messages), counters, STARTTLS and AUTH.
The replies carry graphsmtp's codes, not always its words: a benchmark peer only.
"""

from __future__ import annotations

import os
import sys
from types import MappingProxyType
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.logger import FileLogObserver, Logger, globalLogBeginner
from twisted.python.failure import Failure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from plain_twisted import LeanSMTP  # noqa: E402

from gateway.auth.relay import RelayAccessPolicy  # noqa: E402
from gateway.config.model import LOOPBACK_NETWORKS, Limits, ListenerConfig  # noqa: E402
from gateway.logging import ClassicLines, text_observer_for  # noqa: E402
from gateway.mail.errors import MailRefusal  # noqa: E402
from gateway.mail.message import choose_sending_mailbox  # noqa: E402
from gateway.policy.chain import PolicyChain  # noqa: E402
from gateway.policy.interfaces import MessageView, SessionView  # noqa: E402
from gateway.smtp.addresses import parse_helo, parse_mail_from, parse_rcpt_to, recipient_key  # noqa: E402
from gateway.smtp.headers import MessageDates, missing_headers, received_header  # noqa: E402
from gateway.smtp.intake import MessageIntake, judge_header_section  # noqa: E402
from gateway.smtp.peers import peer_address  # noqa: E402
from gateway.smtp.replies import clean_text, spool_refusal, verdict_refusal  # noqa: E402
from gateway.smtp.transaction import mail_parameter_problem, with_envelope  # noqa: E402
from gateway.spool.entry import Envelope, Provenance  # noqa: E402

HOSTNAME = "bench.localdomain"
#: The commands CheckedSMTP answers itself, by the method that does.
_HANDLERS = MappingProxyType({b"HELO": "_helo", b"EHLO": "_helo", b"MAIL": "_mail", b"RCPT": "_rcpt",
                              b"DATA": "_data", b"RSET": "_rset"})


def reply_line(code: int, status: str, text: str) -> bytes:
    return f"{code} {status} {clean_text(text)}\r\n".encode("ascii")


def refusal_line(refusal: Any) -> bytes:
    """The reply for anything with graphsmtp's ``code``, ``status`` and ``text`` (a refusal, an address problem)."""
    return reply_line(refusal.code, refusal.status, refusal.text)


class CheckedFactory(ServerFactory):
    """L{CheckedSMTP} sessions on ``commit.spool`` (a L{plain_twisted.GatewaySpoolCommit}'s)."""

    def __init__(self, commit: Any) -> None:
        self.spool = commit.spool
        self.limits = Limits()
        self.dates = MessageDates()
        listener = ListenerConfig(name="bench", endpoint="tcp:0", trusted_networks=LOOPBACK_NETWORKS)
        self.chain = PolicyChain((), guard=RelayAccessPolicy(listener))
        # graphsmtp's namespace, so that the daemon's observers treat the line as they treat its own.
        self.log = Logger(namespace="gateway.smtp.protocol.GatewayESMTP")

    def buildProtocol(self, addr: object) -> "CheckedSMTP":
        return CheckedSMTP(self)


class CheckedSMTP(LeanSMTP):
    """One session of the floor (see the module docstring for what it checks and what not)."""

    def __init__(self, factory: CheckedFactory) -> None:
        super().__init__(self._never)
        self._factory = factory
        self._view: Optional[SessionView] = None
        self._name: Optional[str] = None
        self._sender: Optional[str] = None  # set once the guard accepted MAIL: a transaction is open
        self._recipients: list[str] = []
        self._keys: set[str] = set()
        self._writer: Any = None  # the open spool writer, from 354 until the commit takes it
        self._intake: Optional[MessageIntake] = None
        self._gone = False

    @staticmethod
    def _never(body: bytes) -> Deferred:
        raise AssertionError("the spool writer commits, LeanSMTP's commit is not used")

    def connectionMade(self) -> None:
        address, port = peer_address(self.transport.getPeer())
        self._view = SessionView(listener="bench", client_address=address, client_port=port, client_name=None,
                                 tls=False, identity=None, trusted_network=True)
        super().connectionMade()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """A message still being received is discarded, as graphsmtp discards it."""
        self._gone = True
        self._abort()

    # -- commands

    def _command(self, verb: bytes, line: bytes) -> None:
        name = _HANDLERS.get(verb)
        if name is None:
            super()._command(verb, line)  # NOOP, QUIT and the rest: the lean floor's answers
        else:
            getattr(self, name)(verb, line)

    def _helo(self, verb: bytes, line: bytes) -> None:
        """A valid name starts over (HELO acts as RSET), as graphsmtp's greeting does."""
        name = parse_helo(line[5:])
        if name is None:
            self.transport.write(reply_line(501, "5.5.4", "Invalid domain name"))
            return
        self._name = name
        self._end_transaction()
        super()._command(verb, line)

    def _rset(self, verb: bytes, line: bytes) -> None:
        self._end_transaction()
        super()._command(verb, line)

    def _mail(self, verb: bytes, line: bytes) -> None:
        if self._sender is not None:
            self.transport.write(reply_line(503, "5.5.1", "Nested MAIL command"))
            return
        path = self._path(parse_mail_from, line)
        if path is None:
            return
        bad_parameter = mail_parameter_problem(path.params, self._factory.limits.max_message_size)
        if bad_parameter is not None:
            self.transport.write(reply_line(*bad_parameter))
            return
        refusal = self._guard(lambda chain, view: chain.on_mail_from(view, path.address), path.address)
        if refusal is None:
            self._sender = path.address
        self.transport.write(refusal or reply_line(250, "2.1.0", "Sender ok"))

    def _rcpt(self, verb: bytes, line: bytes) -> None:
        if self._sender is None:
            self.transport.write(reply_line(503, "5.5.1", "Need MAIL before RCPT"))
            return
        path = self._path(parse_rcpt_to, line)
        if path is None:
            return
        if path.params:
            self.transport.write(reply_line(555, "5.5.4", "Unsupported RCPT parameter " + next(iter(path.params))))
            return
        key = recipient_key(path.address)
        if key in self._keys:
            self.transport.write(reply_line(250, "2.1.5", "Recipient ok (duplicate)"))
            return
        refusal = self._guard(lambda chain, view: chain.on_rcpt_to(view, path.address), self._sender)
        if refusal is None:
            self._keys.add(key)
            self._recipients.append(path.address)
        self.transport.write(refusal or reply_line(250, "2.1.5", "Recipient ok"))

    def _path(self, parse: Callable[[bytes], tuple[Any, Any]], line: bytes) -> Any:
        """The MAIL or RCPT argument as graphsmtp parses it, or None when refused (the reply is sent)."""
        path, problem = parse(line[5:])
        if problem is not None:
            self.transport.write(refusal_line(problem))
            return None
        return path

    def _guard(self, step: Callable[[PolicyChain, SessionView], Deferred], sender: str) -> Optional[bytes]:
        """
        The reply refusing a guard step, or None when the guard lets it go on.  The relay guard
        answers at once; one that had not would be refused here (graphsmtp would wait).
        """
        assert self._view is not None
        results: list[Any] = []
        step(self._factory.chain, with_envelope(self._view, sender, tuple(self._recipients))).addBoth(results.append)
        if not results:
            return reply_line(451, "4.3.0", "The guard did not answer at once")
        refusal = verdict_refusal(results[0])
        return None if refusal is None else refusal_line(refusal)

    def _data(self, verb: bytes, line: bytes) -> None:
        if self._sender is None:
            self.transport.write(reply_line(503, "5.5.1", "Need MAIL command"))
            return
        if not self._recipients:
            self.transport.write(reply_line(554, "5.5.1", "No valid recipients"))
            return
        self._committing = True  # no more commands until the writer is open: what follows is data
        self._factory.spool.open_writer().addCallbacks(self._writer_opened, self._spool_failed)

    def _writer_opened(self, writer: Any) -> None:
        if self._gone:
            writer.abort()
            return
        self._writer = writer
        self._intake = MessageIntake(writer, self._factory.limits, self._prefix)
        self._committing = False
        self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self.dataReceived(data)

    def _prefix(self, names: set) -> tuple[bytes, bytes]:
        """graphsmtp's Received line and the Message-ID and Date a message lacks."""
        assert self._view is not None and self._writer is not None
        now = reactor.seconds()  # type: ignore[attr-defined]
        queue_id, dates = self._writer.queue_id, self._factory.dates
        return (received_header(self._name, self._view.client_address, HOSTNAME, queue_id, False, False, now, dates),
                missing_headers(names, HOSTNAME, queue_id, now, True, True, dates))

    # -- the message

    def dataReceived(self, data: bytes) -> None:
        """Between 354 and the final dot the data goes to the intake, else to the lean floor's commands."""
        intake = self._intake
        if intake is None:
            super().dataReceived(data)
            return
        rest = intake.feed(data)
        if intake.line_too_long:
            self._abort()
            self._quit = True
            self.transport.write(reply_line(500, "5.5.2", "Line too long"))
            self.transport.loseConnection()
        elif rest is not None:
            self._pending = bytearray(rest)
            self._end_of_data(intake)

    def _end_of_data(self, intake: MessageIntake) -> None:
        """The checks after the final dot, then the commit; any refusal discards the message."""
        self._intake = None
        self._committing = True
        refusal, mailbox = self._judge_message(intake)
        if refusal is not None:
            self._abort()
            self._end_transaction()
            self._answered(refusal)
            return
        writer, self._writer = self._writer, None
        envelope = Envelope(self._sender or "", tuple(self._recipients))
        assert self._view is not None
        provenance = Provenance(client_address=self._view.client_address, client_name=self._name or "",
                                listener="bench", tls=False)
        # The spool writer discards its own temporary file when the commit fails.
        writer.commit(envelope, provenance, None, sending_mailbox=mailbox).addCallbacks(
            self._stored, self._spool_failed, callbackArgs=(envelope,))

    def _judge_message(self, intake: MessageIntake) -> tuple[Optional[bytes], Optional[str]]:
        """What graphsmtp would refuse the message with, else None and the mailbox it sends as."""
        if intake.refusal is not None:
            return refusal_line(intake.refusal), None
        assert intake.header_section is not None
        try:
            judged = judge_header_section(intake.header_section, intake.stopped_at)
        except MailRefusal as refused:
            return reply_line(refused.code, refused.status, f"Message refused: {refused.text}"), None
        message = MessageView(headers=None, header_bytes=intake.header_section, size=self._writer.bytes_written,
                              open_body=None, mail=judged)
        refusal = self._guard(lambda chain, view: chain.on_message(view, message), self._sender or "")
        if refusal is not None:
            return refusal, None
        mailbox = choose_sending_mailbox(judged, self._sender or "", "header-from")
        if mailbox is None:
            return reply_line(550, "5.6.0", "Message refused: no From header and a null reverse-path, "
                                            "so no mailbox to send as"), None
        return None, mailbox

    def _stored(self, entry: Any, envelope: Envelope) -> None:
        """Logged before the 250: the answer lets the next pipelined transaction begin."""
        assert self._view is not None
        self._factory.log.info(
            "received {queue_id} from {client} size {size} nrcpt {nrcpt}",
            queue_id=entry.queue_id, client=f"{self._name or 'unknown'}[{self._view.client_address}]",
            size=entry.size, nrcpt=len(envelope.recipients), tls=False, listener="bench",
            **{"from": envelope.sender, "to": list(envelope.recipients)})
        self._end_transaction()
        self._answered(reply_line(250, "2.0.0", f"Ok: queued as {entry.queue_id}"))

    def _spool_failed(self, failure: Failure) -> None:
        """The writer could not be opened or the commit failed: graphsmtp's answer to spool trouble."""
        self._end_transaction()
        self._answered(refusal_line(spool_refusal(failure)))

    def _abort(self) -> None:
        """Discard the message being received, if any."""
        writer, self._writer, self._intake = self._writer, None, None
        if writer is not None:
            writer.abort()

    def _end_transaction(self) -> None:
        self._sender, self._recipients, self._keys = None, [], set()


def log_like_the_daemon() -> None:
    """The log line goes to stdout through the observers ``twistd -n graphsmtp`` has."""
    globalLogBeginner.beginLoggingTo([text_observer_for(FileLogObserver(sys.stdout, ClassicLines()))],
                                     redirectStandardIO=False)


__all__ = ["CheckedFactory", "CheckedSMTP", "log_like_the_daemon"]
