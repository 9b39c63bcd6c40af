"""
Delivery status notifications (RFC 3464) for messages that failed for good.

Graph reports recipient problems it finds after 202 as NDRs to the *sending mailbox*, but a
failure the gateway itself decides (mailbox not found, send-as denied, too large, queue
lifetime over) would otherwise only be in the gateway's log.  With ``graph.dsn = true`` the
envelope sender gets a standard multipart/report from ``graph.postmaster``.

Safeguards against mail loops and floods: never to the null reverse-path, never to the
postmaster itself, never about a message that is itself automatic (Auto-Submitted, or a
report); at most ``rate`` notices a minute (the rest are logged and dropped) and two requests
at a time.  A notice is
sent once, best effort: if Graph refuses it, that is logged and not retried.
"""

from __future__ import annotations

import email.utils
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.delivery.graph.body import Literal
from gateway.delivery.graph.client import GraphClient
from gateway.delivery.graph.credentials import TenantCredentials
from gateway.delivery.graph.mime import HeaderSection, normalise, read_header_section
from gateway.delivery.graph.outcomes import step_succeeded
from gateway.delivery.graph.token import TokenProviders
from gateway.delivery.interfaces import Delivered, IDeliveryObserver, Permanent, Transient

MAX_ORIGINAL_HEADERS = 64 * 1024


@implementer(IDeliveryObserver)
class DSNObserver:
    """Sends an RFC 3464 failure notice to the envelope sender from ``postmaster``."""

    log = Logger()

    def __init__(self, client: GraphClient, tokens: TokenProviders, credentials: TenantCredentials, postmaster: str,
                 clock: IReactorTime, reporting_mta: str = "graphsmtp", rate: float = 30.0,
                 blocking: Optional[Callable[..., Deferred]] = None) -> None:
        self.client = client
        self.tokens = tokens
        self.credentials = credentials
        self.postmaster = postmaster
        self.clock = clock
        self.reporting_mta = reporting_mta
        self.rate = rate
        self._blocking = blocking or maybeDeferred
        # The postmaster mailbox is a Graph mailbox like any other: at most 2 requests at once.
        self._concurrency = DeferredSemaphore(2)
        self._window_start = 0.0
        self._sent_in_window = 0
        self.sent = 0
        self.suppressed = 0

    def delivered(self, entry: Any, outcome: Delivered) -> None:
        pass

    def deferred(self, entry: Any, outcome: Transient) -> None:
        pass

    def failed(self, entry: Any, outcome: Permanent) -> Optional[Deferred]:
        sender = entry.envelope.sender.strip()
        if not sender:
            return None  # RFC 3464 §2: never notify the null reverse-path
        if normalise(sender) == normalise(self.postmaster):
            return None
        if not self._take_rate_slot():
            self.suppressed += 1
            self.log.warn("dsn for {queue_id} suppressed: more than {rate:.0f} notices a minute",
                          queue_id=entry.queue_id, rate=self.rate)
            return None
        d = self._concurrency.run(lambda: Deferred.fromCoroutine(self._send(entry, outcome)))
        d.addErrback(lambda f: self.log.failure("dsn for {queue_id} failed", f, queue_id=entry.queue_id))
        return d

    def _take_rate_slot(self) -> bool:
        now = self.clock.seconds()
        if now - self._window_start >= 60.0:
            self._window_start, self._sent_in_window = now, 0
        if self._sent_in_window >= self.rate:
            return False
        self._sent_in_window += 1
        return True

    async def _send(self, entry: Any, outcome: Permanent) -> None:
        try:
            section = await self._blocking(read_header_section, entry.message_path, MAX_ORIGINAL_HEADERS)
        except Exception:  # noqa: BLE001 - the file may be gone; the notice still helps
            section = None
        if section is not None and _is_automatic(section):
            self.log.info("no dsn for {queue_id}: the message was itself automatic", queue_id=entry.queue_id)
            return
        report = build_report(entry, outcome, self.postmaster, self.reporting_mta, self.clock.seconds(), section)
        token = await self.tokens.acquire(self.credentials)
        response = await self.client.send_mime(self.credentials.graph_url, self.postmaster, token, Literal(report))
        if step_succeeded(response, "sendMail"):  # 202 only, as for any message
            self.sent += 1
            self.log.info("dsn for {queue_id} sent to {sender}", queue_id=entry.queue_id, sender=entry.envelope.sender)
        else:
            self.log.warn("dsn for {queue_id} refused by Graph: {code} {error}", queue_id=entry.queue_id,
                          code=response.code, error=response.error_code)


def _is_automatic(section: HeaderSection) -> bool:
    auto = (section.get("auto-submitted") or "no").strip().lower()
    content_type = (section.get("content-type") or "").lower()
    return not auto.startswith("no") or "multipart/report" in content_type


def build_report(entry: Any, outcome: Permanent, postmaster: str, reporting_mta: str, now: float,
                 section: Optional[HeaderSection]) -> bytes:
    """The notice as CRLF MIME bytes (small: the original's headers only, never its body)."""
    boundary = f"=_graphsmtp_dsn_{entry.queue_id}"
    status = getattr(outcome, "status", "5.0.0")
    reason = " ".join(str(getattr(outcome, "reason", "delivery failed")).split())
    remote = getattr(outcome, "remote_code", None)
    subject = (section.get("subject") if section else None) or ""
    arrival = email.utils.formatdate(entry.received_at, usegmt=True)
    recipients = "\r\n".join(
        f"Final-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: X-Graph; {remote + ': ' if remote else ''}{reason}\r\n"
        for r in entry.envelope.recipients)
    text = (
        "Your message could not be delivered through Microsoft 365, and the gateway has stopped trying.\r\n\r\n"
        f"Recipients: {', '.join(entry.envelope.recipients)}\r\n"
        f"Reason: {reason}\r\n"
        f"Queue id: {entry.queue_id}\r\n"
    )
    parts = [
        f"From: Mail Delivery System <{postmaster}>",
        f"To: <{entry.envelope.sender}>",
        f"Subject: Undeliverable: {subject}"[:900],
        f"Date: {email.utils.formatdate(now, usegmt=True)}",
        f"Message-ID: <dsn-{entry.queue_id}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        text,
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}\r\nX-Queue-ID: {entry.queue_id}\r\nArrival-Date: {arrival}\r\n",
        recipients,
    ]
    if section is not None and section.fields:
        parts += [f"--{boundary}", "Content-Type: text/rfc822-headers", "",
                  section.raw.decode("utf-8", "replace")]
    parts += [f"--{boundary}--", ""]
    return "\r\n".join(parts).encode("utf-8")


__all__ = ["DSNObserver", "build_report"]
