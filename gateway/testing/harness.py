"""
Start a whole gateway in-process for trial tests: real listeners on ephemeral loopback ports,
the real spool on disk, the configured policies and AUTH, and either the configured deliverer
(capture outbox, or Graph pointed at L{gateway.testing.fake_graph}) or one the test provides.

Public (re-exported by L{gateway.plugin}), so plugin authors test their policies in a few lines::

    gw = yield start_gateway(self, {"listener": [{"name": "in", "endpoint": "tcp:0:interface=127.0.0.1",
                                                 "trusted_networks": ["127.0.0.1/32"],
                                                 "policies": [{"use": "my-policy"}]}]})
    result = yield gw.send("a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nhi\\r\\n")
    self.assertTrue(result.accepted, result)
    [entry] = yield gw.delivered(timeout=5)

``gw.send`` always fires with a L{SendResult} — a refusal at MAIL, RCPT or DATA reads the same
way (``refused_at``, ``code``, ``enhanced``, ``text``) — and ``gw.delivered`` / ``gw.refused``
fail the test once the queue runner has done nothing for ``timeout`` seconds, with what was
sent and the gateway's log lines for it, instead of hanging until trial's 120-second default.
``start_gateway(self, config, graph=True)``
also starts the fake Graph (L{gateway.testing.fake_graph}) and points the gateway at it:
``gw.graph.sent_to("bob@example.com")`` lists what Graph was asked to send to that address.

Everything started is stopped by a cleanup registered on the test case, so trial's janitor
finds no leftover ports, connections or timers.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import ssl
from typing import Any, Iterable, Mapping, Optional, Sequence

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from gateway.config.loader import build_config
from gateway.testing.delivery import RecordingObserver
from gateway.testing.logs import LogCapture

LOOPBACK_EPHEMERAL = "tcp:0:interface=127.0.0.1"
DEFAULT_WAIT = 5.0
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")
_QUEUED_AS = re.compile(r"queued as (\S+)")


class HarnessTimeout(AssertionError):
    """
    What the gateway was expected to do did not happen in time.  An AssertionError, so trial
    reports a failure (not an error) with the explanation: what was sent, how each send ended,
    what the queue runner did, and the gateway's log lines for those messages.
    """


@attrs.frozen
class SendResult:
    """
    How one SMTP transaction of L{RunningGateway.send} ended — the same shape for every refusal.

    ``accepted`` is true when the final DATA reply was 2xx (then ``queue_id`` is the id from
    ``250 2.0.0 Ok: queued as <id>``).  Otherwise ``refused_at`` names the step that was refused
    (``"connect"``, ``"ehlo"``, ``"starttls"``, ``"auth"``, ``"mail"``, ``"rcpt"``, ``"data"``)
    and ``code`` / ``enhanced`` / ``text`` are that reply (``code`` 0 when the server closed the
    connection without one).  ``refused_recipients`` maps each refused RCPT to ``(code, text)``:
    a message with some recipients refused is still accepted for the others, as in SMTP.
    """

    accepted: bool
    refused_at: Optional[str]
    code: int
    enhanced: Optional[str]
    text: str
    queue_id: Optional[str] = None
    sender: str = ""
    recipients: tuple[str, ...] = ()
    refused_recipients: Mapping[str, tuple[int, str]] = attrs.field(factory=dict)

    @property
    def reply(self) -> str:
        """The reply as the client saw it: ``550 5.7.1 Recipient address not allowed``."""
        return " ".join(str(part) for part in (self.code, self.enhanced, self.text) if part)

    def describe(self) -> str:
        """One line: who to whom, and how it ended."""
        who = f"{self.sender or '<>'} -> {', '.join(self.recipients)}"
        if self.accepted:
            return f"{who}: accepted as {self.queue_id} ({self.reply})"
        return f"{who}: refused at {self.refused_at.upper() if self.refused_at else '?'}: {self.reply}"


def _parse_reply(code: int, raw: Any) -> tuple[int, Optional[str], str]:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    text = " ".join(line.strip() for line in text.splitlines())
    m = _ENHANCED.match(text)
    if m:
        return code, m.group(1), text[m.end():]
    return code, None, text


class _Refused(Exception):
    """A reply of 400 or more ended the transaction at the current step."""

    def __init__(self, code: int, raw: Any) -> None:
        super().__init__(code)
        self.code = code
        self.raw = raw


@attrs.define(eq=False)
class _Transaction:
    """One smtplib transaction's progress: the step it is at and the recipients refused so far."""

    sender: str
    recipients: tuple[str, ...]
    step: str = "connect"
    refused_rcpts: dict[str, tuple[int, str]] = attrs.field(factory=dict)

    def expect(self, step: str, reply: tuple[int, Any]) -> None:
        """Enter ``step`` with the client's ``reply`` to it; a 4xx/5xx ends the transaction."""
        self.step = step
        code, text = reply
        if code >= 400:
            raise _Refused(code, text)

    def refused(self, code: int, raw: Any) -> SendResult:
        code, enhanced, text = _parse_reply(code, raw)
        return SendResult(False, self.step, code, enhanced, text, None, self.sender, self.recipients, self.refused_rcpts)

    def greet(self, client: Any, helo: str, starttls: Optional[ssl.SSLContext]) -> None:
        self.expect("ehlo", client.ehlo(helo))
        if starttls is not None:
            self.expect("starttls", client.starttls(context=starttls))
            self.expect("ehlo", client.ehlo(helo))

    def envelope(self, client: Any, login: Optional[tuple[str, str]]) -> None:
        if login:
            self.step = "auth"
            client.login(*login)
        self.expect("mail", client.mail(self.sender))
        self.step = "rcpt"
        last: tuple[int, Any] = (0, "no recipients given")
        for rcpt in self.recipients:
            code, text = client.rcpt(rcpt)
            if code >= 400:
                _, enhanced, reply = _parse_reply(code, text)
                self.refused_rcpts[rcpt] = (code, f"{enhanced} {reply}" if enhanced else reply)
                last = (code, text)
        if len(self.refused_rcpts) == len(self.recipients):
            raise _Refused(*last)

    def accepted(self, code: int, raw: Any) -> SendResult:
        code, enhanced, reply = _parse_reply(code, raw)
        m = _QUEUED_AS.search(reply)
        return SendResult(True, None, code, enhanced, reply, m.group(1) if m else None, self.sender,
                          self.recipients, self.refused_rcpts)


def _connect(host: str, port: int, timeout: float, context: Optional[ssl.SSLContext], implicit_tls: bool) -> Any:
    if implicit_tls:
        return smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    return smtplib.SMTP(host, port, timeout=timeout)


def _close(client: Any) -> None:
    if client is None:
        return
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def smtp_transaction(port: int, sender: str, recipients: Sequence[str], message: bytes, *,
                     host: str = "127.0.0.1", starttls: bool = False, implicit_tls: bool = False,
                     ca_path: Optional[str] = None, login: Optional[tuple[str, str]] = None,
                     helo: str = "client.test", timeout: float = 10) -> SendResult:
    """
    One blocking SMTP transaction with ``smtplib`` (run it in a thread), ending in a
    L{SendResult} whatever happens: refusals and a dropped connection are results, not
    exceptions.  Only a client-side programming error (a bad argument) raises.
    """
    tx = _Transaction(sender, tuple(recipients))
    client: Any = None
    try:
        context = ssl.create_default_context(cafile=ca_path) if (starttls or implicit_tls) else None
        client = _connect(host, port, timeout, context, implicit_tls)
        tx.greet(client, helo, context if starttls else None)
        tx.envelope(client, login)
        tx.step = "data"
        code, text = client.data(message)
        if code >= 400:
            raise _Refused(code, text)
        return tx.accepted(code, text)
    except _Refused as e:
        return tx.refused(e.code, e.raw)
    except smtplib.SMTPResponseException as e:  # AUTH refused, DATA refused before 354, 421...
        return tx.refused(e.smtp_code, e.smtp_error)
    except smtplib.SMTPServerDisconnected as e:
        return tx.refused(0, f"connection closed by the server ({e})")
    except smtplib.SMTPNotSupportedError as e:
        return tx.refused(0, str(e))
    except (OSError, ssl.SSLError) as e:
        return tx.refused(0, f"{type(e).__name__}: {e}")
    finally:
        _close(client)


@attrs.define(eq=False)
class GraphView:
    """
    The fake Graph a L{start_gateway}(..., graph=True) gateway delivers to.  ``server`` is the
    L{gateway.testing.fake_graph.FakeGraphServer} (faults, requests, tokens).
    """

    server: Any

    def sent_to(self, address: str) -> list:
        """Messages Graph was asked to send that ``address`` would receive (To, Cc or Bcc)."""
        return self.server.received_by(address)

    def sent_by(self, mailbox: str) -> list:
        """Messages sent as ``mailbox`` (the ``/users/{mailbox}/sendMail`` path)."""
        return self.server.sent_by(mailbox)

    @property
    def sent(self) -> list:
        """Every message Graph accepted, in order."""
        return list(self.server.sent)


@attrs.define(eq=False)
class RunningGateway:
    """A started gateway; see L{start_gateway}."""

    service: Any
    config: Any
    recorder: RecordingObserver
    log: LogCapture = attrs.field(factory=LogCapture)
    graph: Optional[GraphView] = None
    sends: list = attrs.field(factory=list)

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

    def send(self, sender: str, recipients: Sequence[str], message: bytes, *, listener: Optional[str] = None,
             login: Optional[tuple[str, str]] = None, starttls: bool = False, implicit_tls: bool = False,
             ca_path: Optional[str] = None, helo: str = "client.test", timeout: float = 10) -> Deferred:
        """
        Send one message to a listener (the named one, else the first) with ``smtplib`` in a
        thread.  Always fires with a L{SendResult}, refused or not; it is remembered so a later
        L{delivered} timeout can say what was sent.
        """
        port = self.port(listener)
        started = len(self.log.lines)
        d = deferToThread(smtp_transaction, port, sender, recipients, message, starttls=starttls,
                          implicit_tls=implicit_tls, ca_path=ca_path, login=login, helo=helo, timeout=timeout)

        def remember(result: SendResult) -> SendResult:
            self.sends.append((result, started))
            return result

        return d.addCallback(remember)

    def delivered(self, count: int = 1, timeout: Optional[float] = DEFAULT_WAIT) -> Deferred:
        """
        Fires with the first ``count`` delivered ``SpoolEntry`` values (already removed from the
        queue); fails with L{HarnessTimeout} — what was sent, what happened, the log lines —
        when ``timeout`` seconds pass without the queue runner finishing an attempt (so a slow
        but progressing burst is not cut short; ``None``: wait for ever).
        """
        d = self._wait(count, ("delivered",), timeout, "delivered")
        return d.addCallback(lambda events: [entry for _, entry, _ in events])

    def refused(self, count: int = 1, timeout: Optional[float] = DEFAULT_WAIT) -> Deferred:
        """
        Fires with the first ``count`` ``(entry, outcome)`` pairs the next hop refused for good
        (a permanent failure: the message bounces); fails like L{delivered} after ``timeout``.
        """
        d = self._wait(count, ("failed",), timeout, "refused by the next hop")
        return d.addCallback(lambda events: [(entry, outcome) for _, entry, outcome in events])

    def _wait(self, count: int, kinds: tuple[str, ...], timeout: Optional[float], what: str) -> Deferred:
        d = self.recorder.wait_for(count, kinds)
        if timeout is None or d.called:
            return d
        result: Deferred = Deferred()

        def expired() -> None:
            self.recorder.cancel(d)
            if progress in self.recorder.listeners:
                self.recorder.listeners.remove(progress)
            result.errback(HarnessTimeout(self.explain(
                f"expected {count} message(s) {what}; nothing more happened for {timeout:g} s", kinds)))

        timer = self.service.reactor.callLater(timeout, expired)

        def progress(event: Any) -> None:
            if timer.active():
                timer.reset(timeout)

        self.recorder.listeners.append(progress)

        def fired(value: Any) -> None:
            self.recorder.listeners.remove(progress)
            if timer.active():
                timer.cancel()
                result.callback(value)

        d.addBoth(fired)
        return result

    def explain(self, headline: str, kinds: Iterable[str] = ()) -> str:
        """A readable account of this gateway's traffic, for failure messages."""
        seen = [e for e in self.recorder.events if e[0] in tuple(kinds)]
        lines = [f"{headline}, saw {len(seen)}."]
        if self.recorder.events:
            lines.append("What the queue runner did:")
            for kind, entry, outcome in self.recorder.events:
                lines.append(f"  {kind} {getattr(entry, 'queue_id', '?')}: {outcome!r}")
        if not self.sends:
            lines.append("Nothing was sent with gw.send().")
        else:
            lines.append("Sent with gw.send():")
        for result, started in self.sends:
            lines.append(f"  {result.describe()}")
            related = self.log.mentioning(result.queue_id) if result.queue_id else self.log.lines[started:started + 12]
            label = f"log lines for {result.queue_id}" if result.queue_id else "log lines during that session"
            lines.append(f"    {label}:" if related else f"    ({label}: none)")
            lines.extend(f"      {line}" for line in related[-20:])
        return "\n".join(lines)

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
                  environ: Optional[Mapping[str, str]] = None, prepare: Any = None, graph: Any = None) -> Any:
    """
    Build and start a gateway for ``case`` (a trial TestCase) from ``data`` (TOML structure as
    Python values, or an already built GatewayConfig); stop it in the test's cleanup.
    ``prepare``, if given, is called with the built components just before they start.
    ``graph=True`` starts a fake Graph + Entra for this test and delivers to it (a started
    L{gateway.testing.fake_graph.FakeGraphServer} may be passed instead); ``gw.graph`` then
    offers L{GraphView}'s helpers.
    """
    from gateway.config.model import GatewayConfig
    from gateway.service import GatewayOptions, makeService

    if reactor is None:
        from twisted.internet import reactor
    fake = None
    if graph is not None and graph is not False:
        fake = graph
        if graph is True:
            from gateway.testing.fake_graph import start_fake_graph

            fake = yield start_fake_graph(reactor, os.path.abspath(case.mktemp()))
            case.addCleanup(fake.stop)
        if not isinstance(data, GatewayConfig):
            data = dict(data or {})
            data["graph"] = {
                "tenant_id": fake.tenant_id, "client_id": fake.client_id, "client_secret": fake.client_secret,
                "authority": fake.authority, "graph_url": fake.graph_url, "ca_bundle": fake.ca_path,
                **data.get("graph", {}),
            }
    config = data if isinstance(data, GatewayConfig) else gateway_config(case, data, environ)
    capture = LogCapture()  # from the start: building reports broken plugin modules
    globalLogPublisher.addObserver(capture)
    case.addCleanup(globalLogPublisher.removeObserver, capture)
    service = makeService(GatewayOptions(config, deliverer=deliverer, install_signal_handlers=False), reactor)
    components = service.components
    # [gateway] plugin_paths changed this process's plugin search path: undo it after the test.
    case.addCleanup(components.plugin_search.undo)
    recorder = RecordingObserver()
    components.runner.observers = (*components.runner.observers, recorder)
    if prepare is not None:
        prepare(components)
    running = RunningGateway(service, config, recorder, log=capture, graph=GraphView(fake) if fake is not None else None)
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

    Kept for existing callers; new tests use L{RunningGateway.send}, which fires with a
    L{SendResult} for every outcome.
    """

    def blocking() -> Any:
        context = ssl.create_default_context(cafile=ca_path) if (starttls or implicit_tls) else None
        with _connect(host, port, timeout, context, implicit_tls) as client:
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
    "read_outbox", "LOOPBACK_EPHEMERAL", "SendResult", "HarnessTimeout", "GraphView", "LogCapture",
    "smtp_transaction", "DEFAULT_WAIT",
]
