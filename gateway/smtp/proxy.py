"""
The PROXY-protocol front of a listener: Twisted's ``haproxy:`` wrapper, plus the two things it
leaves to the application (issue 8, finding 6).

* **Who may send a header.**  A PROXY header names the client; believed from anyone, it lets any
  client claim a trusted address.  Only peers in the listener's ``proxy_trusted_networks`` are
  accepted at all: any other connection is closed at accept time, before a byte is read or
  written and before an SMTP session exists.  Peers on a UNIX socket (``haproxy:unix:…``) are
  local processes the socket's permissions already admitted, and are accepted.
* **How long the header may take.**  A load balancer sends the header with its first segment; a
  peer that sends nothing, or half a header, must not hold a connection slot for the SMTP idle
  timeout.  Without a complete header within ``proxy_header_timeout`` seconds the connection is
  aborted.

When the header is complete the SMTP session is told (``proxy_header_received``), even if no
client data came with it: from that moment it knows its real client, counts it against the
per-client limit and greets it.  Between the two layers there may be a TLS layer (implicit TLS
behind PROXY runs inside the PROXY parser), so the notice is passed down the chain of wrapped
protocols to the first one that wants it.
"""

from __future__ import annotations

from typing import Any, Optional, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper,
    HAProxyWrappingFactory,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.smtp.peers import is_trusted

PROXY_PREFIX = "haproxy:"


class TrustedProxyWrapper(HAProxyProtocolWrapper):
    """One PROXY-protocol connection: the header deadline and the 'header complete' notice."""

    factory: "TrustedProxyWrappingFactory"
    transport: Any  # the listening port's TCP/UNIX transport (getPeer, abortConnection)

    def connectionMade(self) -> None:
        self._deadline: Any = self.factory.clock.callLater(self.factory.header_timeout, self._header_late)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        super().dataReceived(data)
        if self._proxyInfo is not None:
            self._stop_deadline()
            _notify_header(self.wrappedProtocol)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _stop_deadline(self) -> None:
        call, self._deadline = getattr(self, "_deadline", None), None
        if call is not None and call.active():
            call.cancel()

    def _header_late(self) -> None:
        self._deadline = None
        peer = self.transport.getPeer()
        self.factory.log.info(
            "closed connection from {peer}: no complete PROXY header within {timeout} s",
            peer=getattr(peer, "host", str(peer)), timeout=self.factory.header_timeout,
        )
        self.transport.abortConnection()


def _notify_header(protocol: Any) -> None:
    """Tell the first protocol down the wrapper chain that wants to know (the SMTP session)."""
    while protocol is not None:
        hook = getattr(protocol, "proxy_header_received", None)
        if hook is not None:
            hook()
            return
        protocol = getattr(protocol, "wrappedProtocol", None)


class TrustedProxyWrappingFactory(HAProxyWrappingFactory):
    """Accepts connections only from trusted PROXY peers and wraps them in L{TrustedProxyWrapper}."""

    protocol: type[HAProxyProtocolWrapper] = TrustedProxyWrapper
    noisy = False
    log = Logger()

    def __init__(self, wrappedFactory: Any, trusted_networks: tuple, header_timeout: float, clock: IReactorTime) -> None:
        super().__init__(wrappedFactory)
        self.trusted_networks = tuple(trusted_networks)
        self.header_timeout = header_timeout
        self.clock = clock

    def trusts(self, peer: Any) -> bool:
        if isinstance(peer, UNIXAddress):
            return True
        if isinstance(peer, (IPv4Address, IPv6Address)):
            return is_trusted(peer.host, self.trusted_networks)
        return False

    def buildProtocol(self, addr: Any) -> Optional[TrustedProxyWrapper]:  # type: ignore[override]
        # None is what IProtocolFactory.buildProtocol returns to refuse a connection.
        if not self.trusts(addr):
            # Returning None makes the port close the connection at once: nothing read, nothing said.
            self.log.info(
                "refused connection from {peer}: not in proxy_trusted_networks of this PROXY listener",
                peer=getattr(addr, "host", str(addr)),
            )
            return None
        return cast(TrustedProxyWrapper, super().buildProtocol(addr))


@implementer(IStreamServerEndpoint)
class TrustedProxyEndpoint:
    """Listens on ``inner`` with every connection behind a L{TrustedProxyWrappingFactory}."""

    def __init__(self, inner: Any, trusted_networks: tuple, header_timeout: float, clock: IReactorTime) -> None:
        self._inner = inner
        self._trusted_networks = trusted_networks
        self._header_timeout = header_timeout
        self._clock = clock

    def listen(self, protocolFactory: Any) -> Any:
        return self._inner.listen(
            TrustedProxyWrappingFactory(protocolFactory, self._trusted_networks, self._header_timeout, self._clock)
        )


__all__ = ["TrustedProxyWrapper", "TrustedProxyWrappingFactory", "TrustedProxyEndpoint", "PROXY_PREFIX"]
