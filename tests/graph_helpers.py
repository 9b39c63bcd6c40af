"""
Shared helpers for the Graph delivery tests: message files and spool entries built directly
(no SMTP layer), and a fake Graph + the real deliverer for one test: over HTTPS (L{start_rig})
or through StubTreq on a Clock (L{stub_rig}, for unit tests that need no network).
"""

from __future__ import annotations

import email.policy
import os
import time
from email.message import EmailMessage
from typing import Any, Iterable, Optional, Union

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, returnValue

from gateway.delivery.graph.factory import build_graph_delivery
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.stub_graph import StubGraph


def write_message(directory: str, message: Union[EmailMessage, bytes], name: str = "message.eml") -> str:
    """Write ``message`` as the spool does: CRLF line endings."""
    os.makedirs(directory, exist_ok=True)
    data = message if isinstance(message, bytes) else message.as_bytes(policy=email.policy.SMTP)
    if not isinstance(message, bytes):
        assert b"\r\n" in data
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_entry(path: str, sender: str, recipients: Iterable[str], queue_id: str = "Q0001",
               credential_ref: Optional[str] = None) -> SpoolEntry:
    return SpoolEntry(
        queue_id=queue_id,
        envelope=Envelope(sender, tuple(recipients)),
        provenance=Provenance("127.0.0.1", "client.test", "test", credential_ref=credential_ref),
        received_at=0.0,
        message_path=path,
        size=os.path.getsize(path),
    )


def simple_message(sender: str = "alice@contoso.test", to: Iterable[str] = ("bob@fabrikam.test",),
                   cc: Iterable[str] = (), subject: str = "hello", body: str = "Hello Bob.\n") -> EmailMessage:
    m = EmailMessage()
    m["From"] = sender
    if to:
        m["To"] = ", ".join(to)
    if cc:
        m["Cc"] = ", ".join(cc)
    m["Subject"] = subject
    m["Message-ID"] = "<test-1@contoso.test>"
    m.set_content(body)
    return m


@attrs.define
class GraphRig:
    """A fake Graph and a real deliverer (thread pools, HTTP pool, MSAL) pointed at it."""

    server: Any
    deliverer: Any
    config: Any
    directory: str
    #: The whole L{gateway.delivery.graph.factory.GraphDelivery}: services, DSN observer, tenant monitor.
    delivery: Any = None
    _count: int = 0

    def entry(self, message: Union[EmailMessage, bytes], sender: str, recipients: Iterable[str],
              credential_ref: Optional[str] = None) -> SpoolEntry:
        self._count += 1
        path = write_message(self.directory, message, f"m{self._count}.eml")
        return make_entry(path, sender, recipients, f"Q{self._count:04d}", credential_ref)


@attrs.define
class StubRig:
    """
    L{GraphRig}'s fast sibling for unit tests: the fake Graph behind StubTreq and the real
    deliverer on a Clock (no sockets, no TLS, no MSAL; tokens come straight from the fake).
    ``deliver`` pumps the stub and returns a fired Deferred.
    """

    stub: StubGraph
    deliverer: Any
    config: Any
    directory: str
    _count: int = 0

    @property
    def server(self) -> Any:
        return self.stub.fake

    def entry(self, message: Union[EmailMessage, bytes], sender: str, recipients: Iterable[str],
              credential_ref: Optional[str] = None) -> SpoolEntry:
        self._count += 1
        path = write_message(self.directory, message, f"m{self._count}.eml")
        return make_entry(path, sender, recipients, f"Q{self._count:04d}", credential_ref)

    def deliver(self, entry: SpoolEntry) -> Deferred:
        return maybeDeferred(self.stub.run, self.deliverer.deliver(entry))


def stub_rig(testcase: Any, server_options: Optional[dict] = None, **config_overrides: Any) -> StubRig:
    """A L{StubRig} for ``testcase`` (``server_options`` for the fake, the rest for GraphConfig)."""
    stub = StubGraph.create(**(server_options or {}))
    stub.clock.advance(time.time())  # the fake's token expiry is wall-clock time
    config = stub.config(**config_overrides)
    return StubRig(stub, stub.deliverer(config), config, os.path.abspath(testcase.mktemp()))


@inlineCallbacks
def start_rig(testcase: Any, reactor: Any, server_options: Optional[dict] = None, **config_overrides: Any):
    """Start fake + deliverer for ``testcase``; everything is stopped by cleanups."""
    directory = os.path.abspath(testcase.mktemp())
    server = yield start_fake_graph(reactor, os.path.join(directory, "ca"), **(server_options or {}))
    testcase.addCleanup(server.stop)
    config = server.graph_config(**config_overrides)
    delivery = build_graph_delivery(config, reactor)
    services = delivery.services
    for service in services:
        service.startService()

    @inlineCallbacks
    def stop_services():
        for service in reversed(services):
            yield service.stopService()

    testcase.addCleanup(stop_services)
    returnValue(GraphRig(server, delivery.deliverer, config, os.path.join(directory, "spool"), delivery))
