"""
Start a whole gateway in-process for trial tests: real listeners on ephemeral loopback ports,
the real spool on disk, the configured policies and AUTH, and either the configured deliverer
(capture outbox, or Graph pointed at L{gateway.testing.fake_graph}) or one the test provides.

Public, so plugin authors test their policies in a few lines::

    gw = yield start_gateway(self, {"listener": [{"name": "in", "endpoint": "tcp:0:interface=127.0.0.1",
                                                 "trusted_networks": ["127.0.0.1/32"],
                                                 "policies": [{"use": "my-policy"}]}]})
    reply = yield send_message(gw.port("in"), "a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nhi\\r\\n")
    [entry] = yield gw.delivered(1)

Everything started is stopped by a cleanup registered on the test case, so trial's janitor
finds no leftover ports, connections or timers.
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import ssl
from typing import Any, Iterable, Mapping, Optional, Sequence

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from gateway.config.loader import build_config
from gateway.delivery.interfaces import IDeliveryObserver

LOOPBACK_EPHEMERAL = "tcp:0:interface=127.0.0.1"


@implementer(IDeliveryObserver)
@attrs.define(eq=False)
class RecordingObserver:
    """
    Remembers every outcome the queue runner applied — after the spool reflects it — so a
    test can wait for deliveries instead of sleeping.  ``events`` holds
    ``(kind, entry, outcome)`` with kind ``"delivered"``, ``"deferred"`` or ``"failed"``.
    """

    events: list = attrs.field(factory=list)
    _waiters: list = attrs.field(factory=list)

    def delivered(self, entry: Any, outcome: Any) -> None:
        self._record("delivered", entry, outcome)

    def deferred(self, entry: Any, outcome: Any) -> None:
        self._record("deferred", entry, outcome)

    def failed(self, entry: Any, outcome: Any) -> None:
        self._record("failed", entry, outcome)

    def wait_for(self, count: int, kinds: Iterable[str] = ("delivered", "deferred", "failed")) -> Deferred:
        """Fires with the first ``count`` events of the given kinds, once there are that many."""
        d: Deferred = Deferred()
        self._waiters.append((count, tuple(kinds), d))
        self._wake()
        return d

    def _record(self, kind: str, entry: Any, outcome: Any) -> None:
        self.events.append((kind, entry, outcome))
        self._wake()

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            count, kinds, d = waiter
            matching = [e for e in self.events if e[0] in kinds]
            if len(matching) >= count:
                self._waiters.remove(waiter)
                d.callback(matching[:count])


@attrs.define(eq=False)
class RunningGateway:
    """A started gateway; see L{start_gateway}."""

    service: Any
    config: Any
    recorder: RecordingObserver

    @property
    def components(self) -> Any:
        return self.service.components

    def port(self, listener: Optional[str] = None) -> int:
        """The TCP port the named (or the only/first) listener is bound to."""
        for part in self.components.listeners:
            if listener is None or part.config.name == listener:
                return part.service.port.getHost().port
        raise KeyError(listener)

    def status_port(self) -> Deferred:
        """Fires with the TCP port of the ``[status]`` endpoint."""
        d: Deferred = Deferred()

        def got(port: Any) -> Any:
            d.callback(port.getHost().port)
            return port  # the service needs the port back to stop listening later

        self.service.status._waitingForPort.addCallback(got)
        return d

    def delivered(self, count: int) -> Deferred:
        """Fires with the first ``count`` delivered ``SpoolEntry`` values (already removed from the queue)."""
        d = self.recorder.wait_for(count, ("delivered",))
        return d.addCallback(lambda events: [entry for _, entry, _ in events])

    def outcomes(self, count: int, kinds: Iterable[str] = ("delivered", "deferred", "failed")) -> Deferred:
        """Fires with the first ``count`` ``(kind, entry, outcome)`` events of the given kinds."""
        return self.recorder.wait_for(count, kinds)

    def outbox_messages(self) -> list:
        """The capture outbox's messages, parsed (``email.message.EmailMessage``), oldest first."""
        return read_outbox(self.config.capture.outbox)

    @inlineCallbacks
    def stop(self) -> Any:
        """Stop the gateway and wait until every server-side session is really gone."""
        from twisted.internet.testing import waitUntilAllDisconnected

        if self.service.running:
            yield maybeDeferred(self.service.stopService)
        sessions = [p for part in self.components.listeners for p in part.factory.sessions]
        if sessions:
            yield waitUntilAllDisconnected(self.service.reactor, sessions)


def gateway_config(case: Any, data: Optional[Mapping[str, Any]] = None, environ: Optional[Mapping[str, str]] = None) -> Any:
    """
    A validated config for a test: ``data`` is the TOML structure as Python values.  State goes
    into a fresh directory under the test's temp dir; with no listener given, one loopback
    listener on an ephemeral port trusts 127.0.0.1.
    """
    data = dict(data or {})
    gateway = dict(data.get("gateway", {}))
    gateway.setdefault("state_dir", os.path.abspath(case.mktemp()))
    gateway.setdefault("hostname", "gateway.test")
    data["gateway"] = gateway
    if "listener" not in data:
        data["listener"] = [{"name": "default", "endpoint": LOOPBACK_EPHEMERAL, "trusted_networks": ["127.0.0.0/8"]}]
    return build_config(data, {}, environ or {}, gateway["state_dir"])


@inlineCallbacks
def start_gateway(case: Any, data: Any = None, deliverer: Any = None, reactor: Any = None,
                  environ: Optional[Mapping[str, str]] = None, prepare: Any = None) -> Any:
    """
    Build and start a gateway for ``case`` (a trial TestCase) from ``data`` (TOML structure as
    Python values, or an already built GatewayConfig); stop it in the test's cleanup.
    ``prepare``, if given, is called with the built components just before they start.
    """
    from gateway.config.model import GatewayConfig
    from gateway.service import GatewayService
    from gateway.wiring import build_components

    if reactor is None:
        from twisted.internet import reactor
    config = data if isinstance(data, GatewayConfig) else gateway_config(case, data, environ)
    components = build_components(config, reactor, deliverer)
    recorder = RecordingObserver()
    components.runner.observers = (*components.runner.observers, recorder)
    if prepare is not None:
        prepare(components)
    service = GatewayService(config, reactor, components=components, install_signal_handlers=False)
    running = RunningGateway(service, config, recorder)
    service.privilegedStartService()
    service.startService()
    case.addCleanup(running.stop)
    for part in components.listeners:
        yield part.service.when_listening()
    yield components.runner.ready
    return running


def send_message(port: int, sender: str, recipients: Sequence[str], message: bytes, *,
                 host: str = "127.0.0.1", starttls: bool = False, implicit_tls: bool = False,
                 ca_path: Optional[str] = None, login: Optional[tuple[str, str]] = None,
                 timeout: float = 10) -> Deferred:
    """
    Send one message with ``smtplib`` in a thread (a real, independent client).  Fires with
    the final reply ``(code, text)`` of DATA; refusals fire with the ``smtplib`` exception.
    """

    def blocking() -> Any:
        context = ssl.create_default_context(cafile=ca_path) if (starttls or implicit_tls) else None
        cls = smtplib.SMTP_SSL if implicit_tls else smtplib.SMTP
        kwargs = {"context": context} if implicit_tls else {}
        with cls(host, port, timeout=timeout, **kwargs) as client:
            client.ehlo("client.test")
            if starttls:
                client.starttls(context=context)
                client.ehlo("client.test")
            if login:
                client.login(*login)
            code, text = client.mail(sender)
            if code >= 400:
                raise smtplib.SMTPSenderRefused(code, text, sender)
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                if code >= 400:
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
            return client.data(message)

    return deferToThread(blocking)


def read_outbox(outbox: str) -> list:
    """Messages in a capture outbox (Maildir ``new/``), parsed, in delivery order."""
    new = os.path.join(outbox, "new")
    if not os.path.isdir(new):
        return []
    names = sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns)
    messages = []
    for name in names:
        with open(os.path.join(new, name), "rb") as f:
            messages.append(email.message_from_binary_file(f, policy=email.policy.default))
    return messages


__all__ = [
    "RecordingObserver", "RunningGateway", "gateway_config", "start_gateway", "send_message",
    "read_outbox", "LOOPBACK_EPHEMERAL",
]
