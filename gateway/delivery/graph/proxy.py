"""
Reaching Graph through an HTTP proxy with CONNECT tunnels (corporate networks often allow
outbound HTTPS only that way).

Twisted's ProxyAgent speaks plain HTTP to the proxy, which would expose the request (and its
bearer token) to it; a tunnel keeps TLS end to end: the proxy sees only ``CONNECT host:443``,
the TLS handshake and certificate verification are with Graph itself.  MSAL (requests) gets the
same proxy through its ``proxies`` setting.
"""

from __future__ import annotations

from typing import Optional, cast
from urllib.parse import urlsplit

from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

MAX_PROXY_REPLY = 16 * 1024


class ProxyError(ConnectionError):
    """The proxy refused or broke the tunnel (its status line, never the request's headers)."""


def parse_proxy_url(url: str) -> tuple[str, int]:
    """``http://host:port`` (the scheme of the proxy connection itself, not of the tunnel)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"proxy must be an http://host:port URL, not {url!r}")
    return parts.hostname, parts.port or 3128


class _TunnelProtocol(Protocol):
    """Asks for the tunnel, then starts TLS and hands the connection to the real protocol."""

    def __init__(self, target: str, creator: IOpenSSLClientConnectionCreator, factory: IProtocolFactory,
                 ready: Deferred) -> None:
        self._target = target
        self._creator = creator
        self._factory = factory
        self._ready: Optional[Deferred] = ready
        self._buffer = b""
        self._wrapped: Optional[IProtocol] = None

    @property
    def _tcp(self) -> ITLSTransport:
        """The TCP connection to the proxy (made by HostnameEndpoint, so it can start TLS and abort)."""
        assert self.transport is not None, "used only while connected"
        return cast(ITLSTransport, self.transport)

    def connectionMade(self) -> None:
        self._tcp.write(f"CONNECT {self._target} HTTP/1.1\r\nHost: {self._target}\r\n\r\n".encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_PROXY_REPLY:
                self._fail(ProxyError("proxy reply too long"))
            return
        status_line = self._buffer.split(b"\r\n", 1)[0].decode("latin-1")
        rest = self._buffer[end + 4:]
        self._buffer = b""
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or fields[1] != "200":
            self._fail(ProxyError(f"proxy refused the tunnel: {status_line[:200]}"))
            return
        if rest:
            self._fail(ProxyError("proxy sent data before TLS started"))
            return
        self._tcp.startTLS(self._creator)
        wrapped = self._factory.buildProtocol(self._tcp.getPeer())
        if wrapped is None:
            self._fail(ProxyError("no protocol for the tunnel"))
            return
        self._wrapped = wrapped
        wrapped.makeConnection(self._tcp)
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(wrapped)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
        elif self._ready is not None:
            ready, self._ready = self._ready, None
            ready.errback(Failure(ProxyError("proxy closed the connection before the tunnel was up")))

    def _fail(self, error: Exception) -> None:
        ready, self._ready = self._ready, None
        self._tcp.abortConnection()
        if ready is not None:
            ready.errback(Failure(error))


class TunnelEndpoint:
    """An IStreamClientEndpoint: TCP to the proxy, CONNECT to ``host:port``, then TLS."""

    def __init__(self, reactor: IReactorTCP, proxy_host: str, proxy_port: int, host: str, port: int,
                 creator: IOpenSSLClientConnectionCreator, timeout: float) -> None:
        self._proxy = endpoints.HostnameEndpoint(reactor, proxy_host, proxy_port, timeout=timeout)
        self._target = f"{host}:{port}"
        self._creator = creator

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred:
        connected: list[_TunnelProtocol] = []

        def cancel(d: Deferred) -> None:
            for proto in connected:
                if proto.transport is not None:
                    proto._tcp.abortConnection()
            attempt.cancel()

        ready: Deferred = Deferred(cancel)

        def build() -> _TunnelProtocol:
            proto = _TunnelProtocol(self._target, self._creator, protocolFactory, ready)
            connected.append(proto)
            return proto

        attempt = self._proxy.connect(Factory.forProtocol(build))
        attempt.addErrback(lambda f: ready.errback(f) if not ready.called else None)
        return ready


@implementer(IAgentEndpointFactory)
class TunnelingEndpointFactory:
    """For ``Agent.usingEndpointFactory``: every https URI goes through the proxy's tunnel."""

    def __init__(self, reactor: IReactorTCP, proxy_url: str, tls_policy: IPolicyForHTTPS,
                 connect_timeout: float = 10.0) -> None:
        self._reactor = reactor
        self._proxy_host, self._proxy_port = parse_proxy_url(proxy_url)
        self._policy = tls_policy
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> TunnelEndpoint:
        if uri.scheme != b"https":
            raise ValueError("only https URLs are tunnelled")
        host = uri.host.decode("ascii")
        creator = self._policy.creatorForNetloc(uri.host, uri.port)
        return TunnelEndpoint(self._reactor, self._proxy_host, self._proxy_port, host, uri.port, creator, self._timeout)


__all__ = ["TunnelingEndpointFactory", "TunnelEndpoint", "ProxyError", "parse_proxy_url"]
