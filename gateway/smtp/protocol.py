"""
One SMTP session: the gateway's server protocol, on ``Protocol`` and ``TimeoutMixin``.

Not a subclass of Twisted's ``ESMTP``: its command loop answers pipelined commands out of order
while a validation is pending, returns to command mode in the middle of an over-long DATA line,
runs commands pipelined behind STARTTLS inside TLS, offers AUTH in plaintext and makes any
end-of-data failure a permanent 550 (see ``twisted.mail.smtp.SMTP.lineReceived``,
``dataLineReceived`` and ``do_DATA`` in Twisted's source; Twisted issue 8126).  Replacing all that left nothing of
``ESMTP`` but its name, so the session is built from parts with one job each:
L{gateway.smtp.input} cuts the client's bytes into events, L{gateway.smtp.flow} paces them
(replies in order, back-pressure), L{gateway.smtp.commands} dispatches the verbs to
L{gateway.smtp.greeting} (HELO/EHLO/STARTTLS), L{gateway.smtp.login} (AUTH) and
L{gateway.smtp.transaction} (MAIL/RCPT/DATA up to the reply after the final dot).

This module holds the connection: its one L{SessionState} (L{gateway.smtp.state}), what is
known about the client, the timers, and the limits that end a session:

* ``idle_timeout`` (no complete command, or no DATA bytes), ``data_timeout`` (whole DATA phase)
  and ``session_timeout`` (whole connection) → ``421 4.4.2`` and close;
* connections beyond ``max_connections`` / ``max_connections_per_ip`` → ``421 4.7.0`` at
  connect (behind PROXY protocol: counted per peer until the header names the client, and
  greeted, or refused, only then — L{gateway.smtp.factory});
* ``max_errors`` error replies → ``421 4.7.0`` and close; so does closing a session whose
  client does not read its replies, without a close grace.

Every reply carries an RFC 3463 enhanced status code.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.policy.interfaces import SessionView
from gateway.smtp.auth import AuthExchange
from gateway.smtp.commands import handle_command
from gateway.smtp.flow import Conversation
from gateway.smtp.input import (
    CLIENT_NOT_READING,
    AuthLineTooLong,
    CommandLine,
    CommandLineTooLong,
    CommandReader,
    Event,
    MessageData,
)
from gateway.smtp.login import auth_response
from gateway.smtp.peers import peer_address
from gateway.smtp.replies import clean_text
from gateway.smtp.state import FINISHING, GREETED, TRANSACTION, SessionState, transition
from gateway.smtp.transaction import Transaction, with_envelope

# How long a closing connection may take to flush our last reply before it is aborted.
CLOSE_GRACE = 30.0


@implementer(IPushProducer)
class GatewayESMTP(Protocol, TimeoutMixin):
    """
    One SMTP session.  Built by L{gateway.smtp.factory.GatewaySMTPFactory}, which sets
    ``callLater`` to its clock's, so every timer runs on an injectable clock.

    It is also the streaming producer of its own replies (registered with the transport at
    connect): the transport pauses it when its write buffer is full and resumes it once drained.
    """

    log = Logger()
    # A TCP/TLS/UNIX transport that is also the push consumer of the session's replies (and
    # ITLSTransport for STARTTLS); Protocol's Optional[ITransport] names none of that.
    transport: Any
    noisy = False  # nothing logs through legacy twisted.python.log (the stock SMTP's did: PII)
    authenticated = False  # a login (AUTH, or the local socket's peer credentials) holds
    startedTLS = False  # STARTTLS completed on this connection
    # What the state says, kept with it by _enter: read several times per command, so plain
    # attributes rather than properties (issue 13).
    #: Closing or gone: nothing more is read or answered.
    finished = False
    #: The connection is lost.
    gone = False
    #: The client has said EHLO/HELO (and not had to start over since).
    greeted = False

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.listener = factory.listener
        self.limits = factory.listener.limits
        self.chain = factory.chain
        self.portal = factory.portal
        self.hostname: str = factory.hostname
        self.state = SessionState.NEW
        self._reader = CommandReader(self.limits.max_command_line, self.limits.max_data_line)
        # The conversation's pace (replies in order, back-pressure both ways) answers these
        # for the command modules.
        self._flow = Conversation(self, self._reader)
        self.wait_for = self._flow.wait_for
        self.pause_reading = self._flow.pause_reading
        self.resume_reading = self._flow.resume_reading
        self._producing_for_transport = False
        self.client_name: Optional[str] = None
        self.identity: Any = None
        self._logout: Optional[Callable[[], None]] = None
        self._exchange: Optional[AuthExchange] = None
        self.transaction: Optional[Transaction] = None
        self._errors = 0
        self.commands_without_mail = 0
        self.messages = 0
        self._view_seen: Optional[tuple[tuple, SessionView]] = None
        self._peer_seen: Optional[tuple[Any, tuple[str, int, bool]]] = None
        self._fixed_peer: Any = None
        self._secure_seen: Optional[tuple[Any, bool]] = None
        self._session_call: Any = None
        self._data_call: Any = None
        self._close_call: Any = None
        # Our own answer is pending (that wait is not the client's idleness), and the idle
        # timer came due meanwhile.
        self._answer_pending = False
        self._idle_lapsed = False

    # ------------------------------------------------------------------ state

    def _enter(self, state: SessionState) -> None:
        self.state = state = transition(self.state, state)
        self.finished = state in FINISHING
        self.gone = state is SessionState.GONE
        self.greeted = state in GREETED
        self._reader.expect_auth_response = state is SessionState.AUTHENTICATING

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        self._enter(SessionState.UNIDENTIFIED)
        self.transport.registerProducer(self, True)
        self._producing_for_transport = True
        self.factory.session_opened(self)
        self.setTimeout(self.limits.idle_timeout)
        self._session_call = self.callLater(self.limits.session_timeout, self._session_expired)
        problem = self.factory.connection_problem(self, self.client_address())
        if problem is not None:
            self.log.info("refused connection from {client}: {problem}", client=self.client_address(), problem=problem)
            self.reply_and_close(421, "4.7.0", f"{self.hostname} {problem}, try again later")
        elif not self.factory.proxied:
            # Behind PROXY protocol nothing is said to a client nobody has named yet.
            self._greet_client()

    def _greet_client(self) -> None:
        self._enter(SessionState.AWAITING_HELO)
        self.sendLine(f"220 {self.hostname} ESMTP".encode("ascii"))

    def proxy_header_received(self) -> None:
        """
        The PROXY header is complete (L{gateway.smtp.proxy} calls this, or the first client
        data shows it): the real client is known now.  It is checked and counted instead of
        the load balancer, then greeted — or refused with 421 — without waiting for it to speak.
        """
        if self.state is not SessionState.UNIDENTIFIED:
            return
        problem, address = self.factory.client_identified(self, self.transport.getPeer(), self.client_address())
        if problem is not None:
            self.log.info("refused connection from {client}: {problem}", client=address, problem=problem)
            self.reply_and_close(421, "4.7.0", f"{self.hostname} {problem}, try again later")
            return
        self._greet_client()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._enter(SessionState.GONE)
        self.setTimeout(None)
        for call in (self._session_call, self._data_call, self._close_call):
            if call is not None and call.active():
                call.cancel()
        self._session_call = self._data_call = self._close_call = None
        tx = self.transaction
        if tx is not None and tx.receiving:
            self.log.info("client {client} disconnected during DATA; message discarded", client=self.client_label())
            tx.discard()
        if tx is not None and tx.phase != "committing":
            tx.end()
        self._logout_identity()
        self.factory.session_closed(self)

    def timeoutConnection(self) -> None:
        if self._answer_pending:
            # Waiting for our own answer is not the client's idleness: the idle period
            # starts again once the answer is sent (answer_given).
            self._idle_lapsed = True
            return
        self._timed_out("idle timeout")

    def answer_pending(self) -> None:
        """
        A reply waits for an answer (policy, spool, portal): the idle timer does not count
        the wait.  It is left armed rather than cancelled and made again for every message
        (a cancelled call and a new one in the reactor's heap, issue 13); if it comes due
        during the wait it is ignored, and armed afresh when the answer comes.
        """
        self._answer_pending = True

    def answer_given(self) -> None:
        """The pending answer came: the client has ``idle_timeout`` from now."""
        if not self._answer_pending:
            return
        self._answer_pending = False
        if self._idle_lapsed:
            self._idle_lapsed = False
            self.setTimeout(self.limits.idle_timeout)
        else:
            self.resetTimeout()

    def _session_expired(self) -> None:
        self._session_call = None
        self._timed_out("session time limit")

    def _data_expired(self) -> None:
        self._data_call = None
        if self.state is not SessionState.RECEIVING_DATA:
            return  # armed for an earlier message's DATA, which ended in time (data_ended)
        self._timed_out("DATA time limit")

    def _timed_out(self, what: str) -> None:
        if self.finished:
            return
        self.log.info("closing session with {client}: {what}", client=self.client_label(), what=what)
        self.reply_and_close(421, "4.4.2", f"{self.hostname} Error: timeout exceeded")

    def reply_and_close(self, code: int, status: str, text: str) -> None:
        """Send a final reply and disconnect; nothing more is read or answered."""
        if self.finished:
            return
        if self._reader.is_held(CLIENT_NOT_READING):
            # The client is not reading: the reply would never arrive, the close never finish.
            self.drop("closing a session whose client does not read its replies")
            return
        self.sendLine(f"{code} {status} {clean_text(text)}".encode("ascii"))
        if code >= 400:
            self.factory.reply_refused(code)
        self.lose_connection(read_on=True)

    def lose_connection(self, read_on: bool = False) -> None:
        self._flow.flush()  # the last replies go out before the close
        self._enter(SessionState.CLOSING)
        self._reader.clear()
        self.setTimeout(None)
        # A TLS connection closes only once the peer's close_notify (or EOF) has been read: a
        # transport left paused (closing while a portal/policy answer was pending, e.g. 421
        # after too many failed logins) would hang until the grace abort.  Nothing read now is
        # acted on.
        if read_on and self._reader.clear_pauses():
            self.transport.resumeProducing()
        # Unregister first: a transport that drains its buffer while its producer is paused
        # resumes the producer instead of finishing the close.
        if self._producing_for_transport:
            self._producing_for_transport = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        # A client that never reads our reply must not keep the connection open.
        self._close_call = self.callLater(CLOSE_GRACE, self._abort_after_grace)

    def drop(self, why: str) -> None:
        """Abort the connection now, without a reply (the client is not reading them)."""
        self.log.info("dropped connection with {client}: {why}", client=self.client_label(), why=why)
        self._enter(SessionState.CLOSING)
        self._reader.clear()
        self._flow.discard_output()
        self.setTimeout(None)
        self.transport.abortConnection()

    def _abort_after_grace(self) -> None:
        self._close_call = None
        if self.state is not SessionState.GONE:
            self.transport.abortConnection()

    def shutdown(self) -> None:
        """The gateway is stopping: tell an idle client to come back later (RFC 5321 421)."""
        tx = self.transaction
        if tx is not None and tx.receiving:
            tx.discard()
        self.reply_and_close(421, "4.3.2", f"{self.hostname} Service shutting down, try again later")

    # ------------------------------------------------------------------ flow (L{gateway.smtp.flow})

    def pauseProducing(self) -> None:
        self._flow.writes_blocked()

    def resumeProducing(self) -> None:
        self._flow.writes_drained()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the cleaning up."""

    def sendLine(self, line: bytes) -> None:
        self._flow.send(line)

    def flush_replies(self) -> None:
        self._flow.flush_unless_pipelined()

    def internal_error(self, reason: Failure) -> None:
        self.log.failure("internal error in SMTP session with {client}", reason, client=self.client_label())
        if self.state is not SessionState.GONE:
            self.reply(451, "4.3.0", "Local error in processing, try again later")

    # ------------------------------------------------------------------ input

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        if self.state is SessionState.UNIDENTIFIED:
            # PROXY-protocol listener behind a wrapper that did not say the header was
            # complete: client data means it is.
            self.proxy_header_received()
            if self.finished:
                return
        if not self._flow.received(data):
            self.reply_and_close(421, "4.7.0", "Too much input while a reply is pending")
        elif self.state is not SessionState.NEW:  # local submission: not open until its user is known
            self._flow.pump()

    def handle_event(self, event: Event) -> None:
        if isinstance(event, MessageData):
            self.resetTimeout()
            assert self.transaction is not None
            self.transaction.feed(event.data)
        elif isinstance(event, CommandLine):
            self.resetTimeout()
            if self._exchange is not None:
                auth_response(self, self._exchange, event.line)
            else:
                handle_command(self, event.line)
        elif isinstance(event, AuthLineTooLong):
            self.exchange_ended()
            self.reply(500, "5.5.6", "Authentication exchange line is too long")
        elif isinstance(event, CommandLineTooLong):
            self.log.info("closing session with {client}: command line too long", client=self.client_label())
            self.reply_and_close(500, "5.5.2", "Line too long")

    # ------------------------------------------------------------------ replies

    def reply(self, code: int, status: str, text: str) -> None:
        if self.finished:
            return
        self.sendLine(f"{code} {status} {clean_text(text)}".encode("ascii"))
        if code >= 400:
            self.factory.reply_refused(code)
            self._errors += 1
            if self._errors >= self.limits.max_errors:
                self.log.info("closing session with {client}: too many errors", client=self.client_label())
                self.reply_and_close(421, "4.7.0", f"{self.hostname} Too many errors")

    def refuse(self, refusal: Any) -> None:
        if refusal.code == 421:
            self.reply_and_close(421, refusal.status, refusal.text)
        else:
            self.reply(refusal.code, refusal.status, refusal.text)

    # ------------------------------------------------------------------ session facts

    def client_address(self) -> str:
        return self._client_view().client_address

    def client_label(self) -> str:
        try:
            address = self.client_address()
        except Exception:
            address = "?"
        return f"{self.client_name or 'unknown'}[{address}]"

    def secure(self) -> bool:
        if self.startedTLS:
            return True
        # Asked three times per message; a transport's own TLS (implicit TLS) does not change,
        # starting TLS on it sets startedTLS.
        transport = self.transport
        seen = self._secure_seen
        if seen is None or seen[0] is not transport:
            tls = bool(ISSLTransport.providedBy(transport) or isinstance(transport, TLSMemoryBIOProtocol))
            seen = self._secure_seen = (transport, tls)
        return seen[1]

    def session_view(self) -> SessionView:
        """What policies may know right now (the envelope so far, if a transaction is open)."""
        view = self._client_view()
        tx = self.transaction
        return view if tx is None else with_envelope(view, tx.sender, tuple(tx.recipients))

    def _client_view(self) -> SessionView:
        """
        The part of the session view about the client, built once and again only when what
        it shows changes (EHLO name, TLS, login, a PROXY header): a message asks for the view
        at MAIL, RCPT and end of data, and each build reads the peer, the TLS state and the
        trusted networks (issue 13).
        """
        peer = self._peer()
        key = (self.client_name, self.identity, self.startedTLS, peer)
        cached = self._view_seen
        if cached is not None and cached[0] == key:
            return cached[1]
        address, port, trusted = self._peer_facts(peer)
        view = SessionView(
            listener=self.listener.name,
            client_address=address,
            client_port=port,
            client_name=self.client_name,
            tls=self.secure(),
            identity=self.identity,
            trusted_network=trusted,
        )
        self._view_seen = (key, view)
        return view

    def _peer(self) -> Any:
        """
        The transport's peer.  A wrapper's (PROXY, implicit TLS) is asked each time: a PROXY
        header changes it after connect.  A plain TCP connection's is fixed when it is
        accepted, and Twisted makes a new address object at each ``getPeer``: it is read once.
        """
        transport = self.transport
        if type(transport) is not tcp.Server:
            return transport.getPeer()
        peer = self._fixed_peer
        if peer is None:
            peer = self._fixed_peer = transport.getPeer()
        return peer

    def _peer_facts(self, peer: Any) -> tuple[str, int, bool]:
        """
        ``peer``'s address, port and whether it is trusted, worked out again only for a new
        peer: the view is built again after EHLO, and parsing the peer is most of a build.
        """
        seen = self._peer_seen
        if seen is not None and (seen[0] is peer or seen[0] == peer):
            return seen[1]
        address, port = peer_address(peer)
        # The session's own listener settings (copied at connect): a SIGHUP reload changes
        # trusted networks for new sessions only.
        facts = (address, port, self.factory.trusted(address, self.listener.trusted_networks))
        self._peer_seen = (peer, facts)
        return facts

    # ------------------------------------------------------------------ HELO / EHLO / STARTTLS

    def greeting_started(self, name: str) -> None:
        """A valid HELO/EHLO name: start over (it acts as RSET) until the chain accepts it."""
        self.reset_transaction()
        self._enter(SessionState.AWAITING_HELO)
        self.client_name = name

    def greeting_accepted(self) -> None:
        self._enter(SessionState.READY)

    def start_tls(self, options: Any) -> None:
        """220 was sent to STARTTLS: switch to TLS and forget everything learnt before."""
        if self._reader.has_input:
            # Bytes after STARTTLS in the same read were sent in plaintext and would be
            # executed inside the TLS session (CVE-2011-0411 class): drop the connection.
            self.log.warn("plaintext after STARTTLS from {client}; connection aborted", client=self.client_label())
            self._flow.flush()
            self._enter(SessionState.CLOSING)
            self._reader.clear()
            self.transport.abortConnection()
            return
        # The 220 goes out in plaintext, before the TLS layer takes over the transport.
        self._flow.flush()
        self.transport.startTLS(options)
        self.startedTLS = True
        # RFC 3207 §4.2: forget everything learnt before TLS, the client must EHLO again.
        self._enter(SessionState.AWAITING_HELO)
        self.client_name = None
        self.reset_transaction()
        self._logout_identity()

    # ------------------------------------------------------------------ the mail transaction

    def transaction_opened(self, tx: Transaction) -> None:
        """MAIL FROM was accepted: L{gateway.smtp.transaction} drives the rest."""
        self._enter(SessionState.IN_TRANSACTION)
        self.transaction = tx
        self.commands_without_mail = 0

    def transaction_closed(self, tx: Transaction) -> None:
        """``tx`` ended (reply sent, refused or failed): a new MAIL may come."""
        if tx is self.transaction:
            self.transaction = None
            if self.state in TRANSACTION:
                self._enter(SessionState.READY)

    def data_started(self) -> None:
        """354 is about to go out: from now on the input is message data, under the DATA time limit."""
        self._enter(SessionState.RECEIVING_DATA)
        self._reader.start_data()
        # One timer for every DATA of the session: pushed to this DATA's limit if still
        # armed (cheaper than a new DelayedCall per message and a cancelled one in the
        # reactor's heap; issue 13).
        call = self._data_call
        if call is not None and call.active():
            call.reset(self.limits.data_timeout)
        else:
            self._data_call = self.callLater(self.limits.data_timeout, self._data_expired)

    def data_ended(self, rest: bytes) -> None:
        """The final dot was read; ``rest`` is what the client pipelined after it."""
        self._enter(SessionState.IN_TRANSACTION)
        self._reader.end_data(rest)
        # The DATA timer stays armed for the next message (data_started pushes it forward);
        # coming due outside DATA it does nothing.

    def line_too_long_in_data(self) -> None:
        self.reply_and_close(500, "5.5.2", "Line too long")

    def reset_transaction(self) -> None:
        tx = self.transaction
        if tx is not None:
            self.transaction_closed(tx)
            tx.end()

    # ------------------------------------------------------------------ AUTH (L{gateway.smtp.login})

    def exchange_started(self, exchange: AuthExchange) -> None:
        self._exchange = exchange
        self._enter(SessionState.AUTHENTICATING)

    def exchange_ended(self) -> None:
        self._exchange = None
        if self.state is SessionState.AUTHENTICATING:
            self._enter(SessionState.READY)

    def logged_in(self, identity: Any, logout: Callable[[], None]) -> None:
        self.authenticated = True
        self.identity = identity
        self._logout = logout

    def _logout_identity(self) -> None:
        logout, self._logout = self._logout, None
        self.authenticated = False
        self.identity = None
        self.exchange_ended()
        if logout is not None:
            try:
                logout()
            except Exception:
                self.log.failure("logout failed")


__all__ = ["GatewayESMTP"]
