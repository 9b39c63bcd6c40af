"""
Turns one configured listener into a Twisted service: the endpoint string through
``serverFromString`` (so ``tcp:``, ``ssl:``, ``systemd:``, ``haproxy:``, ``unix:`` all work) and
a ``StreamServerEndpointService``.

Implicit TLS (``tls = "implicit"``, port 465 style) is layered *over* the endpoint with
``wrapServerTLS``: behind ``haproxy:`` the PROXY header arrives in cleartext before the
ClientHello, so TLS must run inside the PROXY parser, not the other way round
(``twisted.protocols.haproxy`` wraps the endpoint's factory; HAProxy's PROXY protocol spec, section 2).  The TLS options are asked for per connection, so a reloaded certificate applies to the
next client.

A ``haproxy:`` endpoint is built here rather than by its string parser, so that every PROXY
listener gets the trusted-peer check and the header deadline of L{gateway.smtp.proxy}.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gateway.config.model import ListenerConfig
from gateway.smtp.proxy import PROXY_PREFIX, TrustedProxyEndpoint


@implementer(IOpenSSLServerConnectionCreator)
class CurrentOptionsCreator:
    """Creates each TLS connection from whatever ``tls.server_options()`` returns right now."""

    def __init__(self, tls: Any) -> None:
        self._tls = tls

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        options = self._tls.server_options()
        if IOpenSSLServerConnectionCreator.providedBy(options):
            return options.serverConnectionForTLS(tlsProtocol)
        return SSL.Connection(options.getContext(), None)


class SMTPListenerService(StreamServerEndpointService):
    """A ``StreamServerEndpointService`` that tells when (and where) it is listening."""

    def __init__(self, endpoint: Any, factory: Any, listener: ListenerConfig) -> None:
        super().__init__(endpoint, factory)
        self.listener = listener
        self.setName(f"smtp-{listener.name}")
        self.port: Any = None
        self._port_waiters: list[Deferred] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        if port is not None:
            self.port = port
        waiters, self._port_waiters = self._port_waiters, []
        for d in waiters:
            d.callback(port)
        return port

    def when_listening(self) -> Deferred:
        """Fires with the ``IListeningPort`` (``.getHost().port`` for a ``tcp:0`` endpoint)."""
        d: Deferred = Deferred()
        if self.port is not None:
            d.callback(self.port)
        else:
            self._port_waiters.append(d)
        return d


def _is_tls_endpoint(description: str) -> bool:
    """Whether the innermost endpoint already speaks TLS (``ssl:``/``tls:``), so no wrapping."""
    kind = description
    while kind.startswith("haproxy:"):
        kind = kind[len("haproxy:"):]
    return kind.split(":", 1)[0] in ("ssl", "tls")


def _endpoint(reactor: Any, listener: ListenerConfig) -> Any:
    """The listening endpoint; a PROXY listener's only believes the peers it trusts."""
    description = listener.endpoint
    if not description.startswith(PROXY_PREFIX):
        return serverFromString(reactor, description)
    inner = serverFromString(reactor, description[len(PROXY_PREFIX):])
    return TrustedProxyEndpoint(inner, listener.proxy_trusted_networks, listener.proxy_header_timeout, reactor)


def listener_service(reactor: Any, listener: ListenerConfig, factory: Any) -> SMTPListenerService:
    """The service that listens for ``listener`` with ``factory`` (a GatewaySMTPFactory)."""
    endpoint = _endpoint(reactor, listener)
    if listener.tls == "implicit" and not _is_tls_endpoint(listener.endpoint):
        tls = getattr(factory, "tls", None)
        if tls is None:
            raise ValueError(f"listener {listener.name} has tls = \"implicit\" but no TLS options were given")
        endpoint = wrapServerTLS(CurrentOptionsCreator(tls), endpoint, clock=reactor)
    return SMTPListenerService(endpoint, factory, listener)


__all__ = ["listener_service", "SMTPListenerService", "CurrentOptionsCreator"]
