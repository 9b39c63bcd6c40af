"""
Listening sockets handed from the main process to intake workers.

Main side: after the main process has bound a listener (through its usual endpoint, so
``tcp:``, ``ssl:``, ``systemd:`` socket activation and ``haproxy:`` all bind as they always did,
before twistd drops privileges), L{paused_descriptors} stops the main process from accepting on
it and returns the socket's descriptor, which the supervisor passes to every worker it spawns.

Worker side: L{adopted_endpoint} rebuilds the listener's endpoint with the innermost bind
replaced by ``adoptStreamPort`` on the inherited descriptor.  Everything that works per
connection is layered on top exactly as L{gateway.smtp.listener} layers it: the PROXY header
parser with its trusted-peer check, implicit TLS (``tls = "implicit"``), and the TLS of an
``ssl:`` endpoint (whose context factory the endpoint string describes).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.endpoints import serverFromString, wrapServerTLS

from gateway.config.model import ListenerConfig
from gateway.smtp.listener import CurrentOptionsCreator, SMTPListenerService
from gateway.smtp.proxy import PROXY_PREFIX, TrustedProxyEndpoint


def paused_descriptors(parts: Any) -> dict[str, int]:
    """
    ``{listener name: listening socket descriptor}`` of the bound listeners among ``parts``
    (L{gateway.wiring.ListenerParts}); the main process stops accepting on each (the socket
    stays open and listening, so the kernel queues connections for the workers).
    """
    descriptors = {}
    for part in parts:
        port = getattr(part.service, "port", None)
        if port is None:
            continue
        port.stopReading()
        descriptors[part.config.name] = port.fileno()
    return descriptors


class AdoptedStreamEndpoint:
    """An IStreamServerEndpoint whose ``listen`` adopts an already listening descriptor."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def listen(self, factory: Any) -> Any:
        from twisted.internet.defer import execute

        return execute(self._adopt, factory)

    def _adopt(self, factory: Any) -> Any:
        sock = socket.socket(fileno=self._fd)
        try:
            family = sock.family
        finally:
            sock.detach()  # the descriptor stays ours; adoptStreamPort dup()s it
        return self._reactor.adoptStreamPort(self._fd, family, factory)


def adopted_endpoint(reactor: Any, listener: ListenerConfig, fd: int, tls: Any) -> Any:
    """``listener``'s endpoint on the inherited descriptor ``fd`` (see the module docstring)."""
    description = listener.endpoint
    proxied = description.startswith(PROXY_PREFIX)
    while description.startswith(PROXY_PREFIX):
        description = description[len(PROXY_PREFIX):]
    ssl = description.split(":", 1)[0] in ("ssl", "tls")
    endpoint: Any = AdoptedStreamEndpoint(reactor, fd)
    if ssl:
        # The TLS that the endpoint string configures (its certificate and key), read again here.
        original = serverFromString(reactor, description)
        endpoint = wrapServerTLS(original._sslContextFactory, endpoint, clock=reactor)
    if proxied:
        endpoint = TrustedProxyEndpoint(endpoint, listener.proxy_trusted_networks, listener.proxy_header_timeout, reactor)
    if listener.tls == "implicit" and not ssl:
        # Outside the PROXY parser, as in gateway.smtp.listener: the header comes before TLS.
        endpoint = wrapServerTLS(CurrentOptionsCreator(tls), endpoint, clock=reactor)
    return endpoint


def adopted_service(reactor: Any, listener: ListenerConfig, factory: Any, fd: int) -> SMTPListenerService:
    """The worker's listening service for ``listener``: same factory, adopted socket."""
    return SMTPListenerService(adopted_endpoint(reactor, listener, fd, getattr(factory, "tls", None)), factory, listener)


__all__ = ["AdoptedStreamEndpoint", "adopted_endpoint", "adopted_service", "paused_descriptors"]
