"""
The pace of one SMTP conversation, between the session's command reader and its transport.

* **Replies in order.**  L{Conversation.wait_for} holds the reader until the answer to the
  current command (a policy verdict, the spool, the portal) is sent; pipelined input waits in
  the reader meanwhile, so replies come in the order of the commands (RFC 2920), which the
  stock ``LineOnlyReceiver`` loop does not ensure (Twisted issue 8126).  The session's idle
  timer is off while it waits for its own answer: that wait is not the client's.  An answer
  that is there already (a fired Deferred: the usual chain, an open spool) is acted on at
  once, inside the turn that read its command, and one that comes later (the spool's commit)
  through one callback, not a chain of four (issue 13).
* **Reading.**  The reader says when the transport must stop reading (much input while held,
  the spool pushing back) and when it may go on; the transport hears of each change once.
* **Writing.**  The session is its transport's streaming producer.  While the transport's write
  buffer is full (the client does not read), nothing more is answered and input is only
  buffered; more than L{MAX_UNREAD_REPLIES} written on top of a full buffer drops the
  connection, since only replies to steps already under way can add to it.
* **One write per turn.**  Replies made while input is being acted on (a pipelined batch, a
  multi-line EHLO, the reply to an answer that came in and the commands it released) are
  collected and written together when that turn ends: one ``write`` and one ``send`` for a
  whole pipelined batch instead of one per reply (issue 13).  The bytes and their order are
  the same.  A reply made outside such a turn (the greeting, a timeout) goes out at once.
* **Straight to the socket.**  Twisted's TCP transport buffers every write until the next
  reactor turn, which costs two ``epoll_ctl`` calls and an extra pass through the reactor per
  reply; when nothing is buffered the batch is sent right away instead
  (L{write_now}), and whatever the kernel does not take goes through the transport as usual.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.config.model import Limits
from gateway.smtp.answers import has_value
from gateway.smtp.input import AWAITING_REPLY, CLIENT_NOT_READING, CommandReader, Event, ReadDecision

# Reply bytes written while the transport's write buffer is already over its bound (the client
# is not reading); beyond this the connection is dropped.
MAX_UNREAD_REPLIES = 256 * 1024


class FlowSession(Protocol):
    """What the conversation's pace needs of its SMTP session (L{gateway.smtp.protocol.GatewayESMTP})."""

    transport: Any
    limits: Limits

    @property
    def finished(self) -> bool: ...
    @property
    def gone(self) -> bool: ...
    def handle_event(self, event: Event) -> None: ...
    def drop(self, why: str) -> None: ...
    def internal_error(self, reason: Failure) -> None: ...
    def answer_pending(self) -> None: ...
    def answer_given(self) -> None: ...


class Conversation:
    """Acts on the reader's events at the pace the answers and the transport allow."""

    def __init__(self, session: FlowSession, reader: CommandReader) -> None:
        self._session = session
        self._reader = reader
        self._pumping = False
        self._unread_replies = 0
        # Replies waiting for the end of the current turn (see "One write per turn").
        self._out: list[bytes] = []
        self._corked = 0

    # -- writing (the transport's IPushProducer calls, forwarded by the session)

    def writes_blocked(self) -> None:
        """
        The transport's write buffer is full: answer nothing until it drains.  Input is still
        read, up to the reader's threshold, and only then is reading paused: a TLS layer
        pauses its producer while its handshake is under way, and the handshake needs the
        transport to go on reading.
        """
        if self._session.gone or self._reader.is_held(CLIENT_NOT_READING):
            return
        self._reader.hold(CLIENT_NOT_READING)
        self._unread_replies = 0

    def writes_drained(self) -> None:
        """The transport's write buffer has drained: go on with the input read so far."""
        if not self._reader.is_held(CLIENT_NOT_READING):
            return
        self._reader.release(CLIENT_NOT_READING)
        self.resume_reading(CLIENT_NOT_READING)
        if not self._session.finished:
            self.pump()

    def may_send(self, line: bytes) -> bool:
        """Whether ``line`` may be written (False: the connection was dropped instead)."""
        if self._reader.is_held(CLIENT_NOT_READING):
            self._unread_replies += len(line) + 2
            if self._unread_replies > MAX_UNREAD_REPLIES:
                self._session.drop(f"more than {MAX_UNREAD_REPLIES} bytes of replies not read")
                return False
        return True

    def send(self, line: bytes) -> None:
        """Send one reply line (without its CRLF): now, or with the rest of this turn's replies."""
        if not self.may_send(line):
            return
        self._out += (line, b"\r\n")
        if not self._corked:
            self.flush()

    def flush(self) -> None:
        """Write the replies collected so far (before closing the connection or starting TLS)."""
        if self._out:
            data = b"".join(self._out)
            self._out = []
            write_now(self._session.transport, data)

    def flush_unless_pipelined(self) -> None:
        """
        Write the replies so far now, unless commands the client pipelined wait behind them
        (their replies then share the write at the end of the turn).  For a reply that work
        follows on this turn: the 250 after DATA goes out before the "received" line is
        logged, and the client's next command travels meanwhile (issue 13).
        """
        if not self._reader.has_input:
            self.flush()

    def discard_output(self) -> None:
        """Forget unsent replies (the connection is being aborted)."""
        self._out = []

    def _cork(self) -> None:
        self._corked += 1

    def _uncork(self) -> None:
        self._corked -= 1
        if not self._corked:
            self.flush()

    # -- reading

    def received(self, data: bytes) -> bool:
        """Buffer the client's bytes; False when far too many wait (the caller closes the session)."""
        decision = self._reader.receive(data)
        if decision is ReadDecision.OVERFLOW:
            return False
        if decision is ReadDecision.PAUSE:
            self._session.transport.pauseProducing()
        return True

    def pump(self) -> None:
        """Act on buffered input until it runs out or the reader is held (a reply is pending)."""
        if self._pumping:
            return
        self._pumping = True
        self._corked += 1  # _cork(), inline: this runs for every read
        session, next_event = self._session, self._reader.next_event
        try:
            while not session.finished:
                event = next_event()
                if event is None:
                    break
                session.handle_event(event)
        finally:
            self._pumping = False
            self._uncork()

    def pause_reading(self, reason: str) -> None:
        if not self._session.gone and self._reader.pause_reading(reason):
            self._session.transport.pauseProducing()

    def resume_reading(self, reason: str) -> None:
        if self._reader.resume_reading(reason) and not self._session.finished:
            self._session.transport.resumeProducing()

    # -- replies in order

    def wait_for(
        self, d: Deferred, on_result: Callable[[Any], None],
        on_failure: Optional[Callable[[Failure], None]] = None,
        on_gone: Optional[Callable[[Any], None]] = None,
    ) -> None:
        """
        Stop acting on input until ``d`` fires, then call ``on_result``/``on_failure`` (which
        send the reply) and go on with the pipelined input.  If the session has ended by then
        (the client left, or our last reply went out: a 421 when the gateway stops), ``on_gone``
        gets the result (value or Failure) instead, to release what it holds: nothing may follow
        that last reply.

        An answer that is there already, inside the turn that read its command, is acted on
        without holding the reader: the turn acts on no other input until the handler returns.
        (Input that a handler fed back in synchronously, which no transport does, would be
        buffered without the hold's pause and overflow limits; the line limits still apply.)
        """
        session = self._session
        on_failure = on_failure or session.internal_error
        if has_value(d):
            if self._pumping:
                # Answered already, inside the turn that read the command (the usual case): that
                # turn holds the rest of the input and collects the replies, so holding,
                # corking and pumping again would change nothing; act on the value now.
                self._act_now(d.result, on_result, on_gone)
                return
            # Answered already, outside a turn: the same steps as a later answer, at once.
            self._reader.hold(AWAITING_REPLY)
            self._answered(d.result, on_result, on_failure, on_gone)
            return
        self._reader.hold(AWAITING_REPLY)
        # One callback, not a chain of four: every accepted message's 250 comes this way.
        d.addBoth(self._answered, on_result, on_failure, on_gone)
        if self._reader.is_held(AWAITING_REPLY) and not session.gone:
            # Still pending: the idle timer is off until the answer comes.  Reading goes on
            # into the reader's buffer.
            session.answer_pending()

    def _answered(self, result: Any, on_result: Callable[[Any], None], on_failure: Callable[[Failure], None],
                  on_gone: Optional[Callable[[Any], None]]) -> None:
        """
        The answer ``wait_for`` held the input for (a value or a Failure): act on it, then go on
        with the pipelined input.  The reply and those of the commands it releases go out in
        one write.
        """
        self._cork()
        try:
            self._act_now(result, on_failure if isinstance(result, Failure) else on_result, on_gone)
        finally:
            self._unblock()

    def _act_now(self, result: Any, act: Callable[[Any], None], on_gone: Optional[Callable[[Any], None]]) -> None:
        """L{_settle} an answer that has come; an error acting on it is the session's internal error."""
        try:
            self._settle(result, act, on_gone)
        except Exception:
            self._session.internal_error(Failure())

    def _settle(self, result: Any, act: Callable[[Any], None], on_gone: Optional[Callable[[Any], None]]) -> None:
        """``act(result)`` while the session lives; once it has ended, ``on_gone`` releases ``result``."""
        if not self._session.finished:
            act(result)
        elif on_gone is not None:
            on_gone(result)

    def _unblock(self) -> None:
        try:
            session = self._session
            self._reader.release(AWAITING_REPLY)
            if session.gone:
                return
            self.resume_reading(AWAITING_REPLY)
            if not session.finished:
                session.answer_given()
            self.pump()
        finally:
            self._uncork()


def write_now(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to ``transport``, straight into the socket when that is safe: a plain TCP
    connection (no TLS layer, not closing) with nothing buffered, so the bytes cannot overtake
    earlier ones.  What the kernel does not take (or an error) goes through ``transport.write``,
    which buffers it, pauses the producer and reports a lost connection as it always does.
    """
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataBuffer", True)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            data = data[sent:]
    if data:
        transport.write(data)


__all__ = ["Conversation", "FlowSession", "MAX_UNREAD_REPLIES", "write_now"]
