"""
The protocol factory of one SMTP listener: configuration and collaborators for every session,
plus the bookkeeping that spans sessions — connection limits (total and per client IP; behind
PROXY protocol per peer until the header, then per real client) and the
count of transactions in flight, which graceful shutdown waits for (L{GatewaySMTPFactory.drain}).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gateway.config.model import ListenerConfig
from gateway.policy.addresses import client_key
from gateway.smtp.headers import MessageDates
from gateway.smtp.peers import is_ip_literal, is_trusted
from gateway.smtp.protocol import GatewayESMTP
from gateway.smtp.replies import clean_text


class GatewaySMTPFactory(ServerFactory):
    """
    Builds L{GatewayESMTP} sessions for one listener.

    ``tls`` is any object whose ``server_options()`` returns the *current* server TLS options
    (``CertificateOptions`` or an ``IOpenSSLServerConnectionCreator``); it is asked at every
    STARTTLS, so a reloaded certificate applies to new sessions.  ``portal`` (a twisted.cred
    portal, or anything with the same ``login``) enables AUTH when the listener's ``auth`` is
    not ``"none"``.  ``clock`` drives every timeout and the Date/Received timestamps.
    """

    protocol = GatewayESMTP
    noisy = False
    log = Logger()

    def __init__(
        self,
        listener: ListenerConfig,
        hostname: str,
        spool: Any,
        chain: Any,
        clock: IReactorTime,
        portal: Optional[Any] = None,
        tls: Optional[Any] = None,
        add_message_id: bool = True,
        add_date: bool = True,
        intake: Optional[Any] = None,
        send_as: str = "header-from",
        judge_pool: Optional[Any] = None,
    ) -> None:
        self.portal = portal
        self.listener = listener
        self.hostname = hostname
        self.spool = spool
        self.chain = chain
        self.clock = clock
        self.tls = tls
        self.add_message_id = add_message_id
        self.add_date = add_date
        # The Received/Date date-time of the clock's current second, formatted once per second.
        self.dates = MessageDates()
        # Metrics hooks (message_accepted(size), reply_refused(code), in_use_changed()); None
        # counts nothing.
        self.intake = intake
        # The rule that picks the sending mailbox at intake ([graph] send_as), recorded with
        # each message, and the thread pool large header sections are judged in (None: inline).
        self.send_as = send_as
        self.judge_pool = judge_pool
        # Only behind PROXY protocol is the client address unknown at connect time.
        self.proxied = listener.proxy_protocol or listener.endpoint.startswith("haproxy:")
        self.sessions: set = set()
        # The last answers of is_trusted and client_key: consecutive connections usually come
        # from the same client, and parsing its address costs more than the rest of the check.
        self._trust_seen: Optional[tuple[Any, str, bool]] = None
        self._key_seen: Optional[tuple[str, str]] = None
        self._per_ip: dict[str, int] = {}
        self._session_ip: dict[Any, str] = {}
        self.in_flight = 0
        self.draining = False
        self._drain_waiters: list[Deferred] = []
        self._closed_waiters: list[Deferred] = []

    def reconfigure(self, listener: ListenerConfig, hostname: str, chain: Any, portal: Optional[Any],
                    add_message_id: bool, add_date: bool) -> None:
        """
        SIGHUP: sessions built from now on get these settings; sessions already open keep the
        ones they copied when they started.  One method, so nothing sees half a change.
        """
        self.listener = listener
        self.hostname = hostname
        self.chain = chain
        self.portal = portal
        self.add_message_id = add_message_id
        self.add_date = add_date

    def buildProtocol(self, addr: Any) -> GatewayESMTP:
        p = self.protocol(self)
        # TimeoutMixin's timers (and the session's own) run on the injected clock.
        p.callLater = self.clock.callLater  # type: ignore[method-assign, assignment]
        return p

    # -- intake counters

    def message_accepted(self, size: int) -> None:
        if self.intake is not None:
            self.intake.message_accepted(size)

    def reply_refused(self, code: int) -> None:
        if self.intake is not None:
            self.intake.reply_refused(code)

    def _in_use_changed(self) -> None:
        """Sessions or transactions in flight changed (an intake worker reports them)."""
        if self.intake is not None:
            self.intake.in_use_changed()

    # -- sessions and connection limits

    def session_opened(self, proto: Any) -> None:
        self.sessions.add(proto)
        self._in_use_changed()

    def connection_problem(self, proto: Any, address: str) -> Optional[str]:
        """
        Why a new session must be refused (total connections, or too many from ``address``),
        or None.  Counted against its peer from the first moment: behind PROXY protocol the
        peer is the load balancer until the header names the client, so a peer cannot hold
        more than max_connections_per_ip connections whose header has not arrived.
        """
        if len(self.sessions) > self.listener.limits.max_connections:
            return "Too many connections"
        return self.address_problem(proto, address)

    def address_problem(self, proto: Any, address: str) -> Optional[str]:
        """Count ``proto`` against ``address``; why it must be refused (too many from there), or None."""
        if proto in self._session_ip:
            return None
        address = self._client_key(address)  # an IPv6 client counts per /64, like its login failures
        self._session_ip[proto] = address
        count = self._per_ip.get(address, 0) + 1
        self._per_ip[address] = count
        if count > self.listener.limits.max_connections_per_ip:
            return "Too many connections from your address"
        return None

    def client_identified(self, proto: Any, peer: Any, address: str) -> tuple[Optional[str], str]:
        """
        A PROXY header named ``proto``'s real client ``address``: its count moves from the
        peer it was counted against at connect (the load balancer) to that client.  Returns
        why it must be refused (a bogus address, too many from that client) or None, and the
        address as it may be logged.
        """
        if hasattr(peer, "host") and not is_ip_literal(address):
            # Twisted's PROXY v1 parser takes any text as the address (a bare LF too), and
            # it would go into the Received header, the spool and the logs.
            return "Invalid client address in the PROXY header", clean_text(address, 60)
        self._uncount(proto)
        return self.address_problem(proto, address), address

    def session_closed(self, proto: Any) -> None:
        self.sessions.discard(proto)
        self._uncount(proto)
        self._in_use_changed()
        if not self.sessions:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def _uncount(self, proto: Any) -> None:
        address = self._session_ip.pop(proto, None)
        if address is not None:
            left = self._per_ip.get(address, 1) - 1
            if left > 0:
                self._per_ip[address] = left
            else:
                self._per_ip.pop(address, None)

    def _client_key(self, address: str) -> str:
        seen = self._key_seen
        if seen is None or seen[0] != address:
            seen = self._key_seen = (address, client_key(address))
        return seen[1]

    def connections_from(self, address: str) -> int:
        return self._per_ip.get(self._client_key(address), 0)

    def is_trusted(self, address: str) -> bool:
        return self.trusted(address, self.listener.trusted_networks)

    def trusted(self, address: str, networks: Any) -> bool:
        """Whether ``address`` lies in ``networks`` (a session's own copy of its listener's)."""
        seen = self._trust_seen
        if seen is None or seen[0] is not networks or seen[1] != address:
            seen = self._trust_seen = (networks, address, is_trusted(address, networks))
        return seen[2]

    # -- graceful stop

    def transaction_started(self) -> None:
        self.in_flight += 1
        self._in_use_changed()

    def transaction_finished(self) -> None:
        self.in_flight -= 1
        self._in_use_changed()
        if self.in_flight <= 0:
            self.in_flight = 0
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def drain(self) -> Deferred:
        """
        Stop starting new transactions (MAIL gets ``421 4.3.2``) and return a Deferred that
        fires once no transaction is between DATA and its final reply.  The caller bounds the
        wait (e.g. ``addTimeout``) and then calls L{close_sessions}.
        """
        self.draining = True
        if self.in_flight == 0:
            return succeed(None)
        def cancel(d: Deferred) -> None:
            if d in self._drain_waiters:
                self._drain_waiters.remove(d)

        d: Deferred = Deferred(cancel)
        self._drain_waiters.append(d)
        return d

    def close_sessions(self) -> None:
        """Tell every connected client ``421 4.3.2`` and disconnect (partial messages are discarded)."""
        for proto in list(self.sessions):
            proto.shutdown()

    def sessions_gone(self) -> Deferred:
        """
        Fires once no session is left (each closed after its transport wrote out what it
        buffered); cancel it to stop waiting.  L{gateway.smtp.closing} bounds the wait.
        """
        if not self.sessions:
            return succeed(None)

        def cancel(d: Deferred) -> None:
            if d in self._closed_waiters:
                self._closed_waiters.remove(d)

        d: Deferred = Deferred(cancel)
        self._closed_waiters.append(d)
        return d


__all__ = ["GatewaySMTPFactory"]
