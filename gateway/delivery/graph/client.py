"""
The Graph REST calls the deliverer makes, over one injected treq client.

Every request has a timeout (connect, send, response headers) and the response body has its
own; redirects are never followed (a redirected POST could re-send a message); bodies are
L{StreamingBodyProducer}s so Content-Length is exact and the gateway knows whether the last
byte left before something went wrong.  Responses come back as L{GraphResponse} whatever the
status; only transport failures raise, as L{GraphTransportError}.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import uuid
from typing import Any, Awaitable, Callable, Optional, Union
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from gateway.delivery.graph.body import Base64Of, Literal, Source, StreamingBodyProducer
from gateway.delivery.graph.token import AccessToken

API_VERSION = "v1.0"
MAX_RETRY_AFTER = 86400.0


@attrs.frozen
class GraphResponse:
    """
    What Graph answered.  ``error_code``/``error_message`` come from the standard error body
    (``{"error": {"code", "message"}}``); ``retry_after`` is in seconds; ``body_sent`` says the
    whole request body was written before the answer.
    """

    code: int
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    retry_after: Optional[float] = None
    request_id: Optional[str] = None
    json: Any = None
    location: Optional[str] = None
    body_sent: bool = True

    @property
    def ok(self) -> bool:
        """
        Any 2xx.  Not "the step worked": Graph answers each step with one documented code
        (sendMail 202, …), so deciding success is L{gateway.delivery.graph.outcomes.step_succeeded}.
        """
        return 200 <= self.code < 300


class GraphTransportError(Exception):
    """
    No HTTP answer: connection refused or reset, TLS failure, or timeout.  ``body_sent`` is
    true when the request body had been written completely, so Graph may have acted on it.
    """

    def __init__(self, reason: str, body_sent: bool, timed_out: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.body_sent = body_sent
        self.timed_out = timed_out


class GraphClient:
    """
    Graph calls for one Graph root (``graph_url`` without the version).  ``http`` is a
    ``treq.HTTPClient``; ``clock`` drives timeouts; ``cooperator`` schedules body reads.
    ``on_unavailable`` is called after a 503 (Graph asks for a new connection then);
    ``on_request(method, url, status, seconds)``, if given, is told how long each request took
    (``status`` is the HTTP code, or ``"error"`` when no answer came) — for latency metrics.
    """

    log = Logger()

    def __init__(
        self,
        http: Any,
        clock: IReactorTime,
        cooperator: Cooperator,
        request_timeout: float = 60.0,
        body_timeout: float = 30.0,
        on_unavailable: Optional[Callable[[], object]] = None,
        on_request: Optional[Callable[[str, str, Union[int, str], float], object]] = None,
    ) -> None:
        self._http = http
        self._clock = clock
        self._cooperator = cooperator
        self._request_timeout = request_timeout
        self._body_timeout = body_timeout
        self._on_unavailable = on_unavailable
        self._on_request = on_request

    # -- the calls ------------------------------------------------------------------------

    def send_mime(self, graph_url: str, mailbox: str, token: AccessToken, mime: Source) -> Awaitable[GraphResponse]:
        """``POST /users/{mailbox}/sendMail`` with the MIME message base64-encoded (Mail.Send)."""
        return self.request("POST", self.user_url(graph_url, mailbox, "sendMail"), token,
                            Base64Of(mime), b"text/plain")

    def send_json(self, graph_url: str, mailbox: str, token: AccessToken, message: dict, save_to_sent_items: bool = True):
        """``POST /users/{mailbox}/sendMail`` with a JSON message (the only form with saveToSentItems)."""
        body: dict[str, Any] = {"message": message}
        if not save_to_sent_items:
            body["saveToSentItems"] = False
        return self.request("POST", self.user_url(graph_url, mailbox, "sendMail"), token,
                            Literal(json.dumps(body).encode("utf-8")), b"application/json")

    def create_mime_draft(self, graph_url: str, mailbox: str, token: AccessToken, mime: Source) -> Awaitable[GraphResponse]:
        """``POST /users/{mailbox}/messages`` from MIME: a draft (Mail.ReadWrite); 201 + message."""
        return self.request("POST", self.user_url(graph_url, mailbox, "messages"), token,
                            Base64Of(mime), b"text/plain")

    def patch_message(self, graph_url: str, mailbox: str, token: AccessToken, message_id: str, changes: dict):
        return self.request("PATCH", self.user_url(graph_url, mailbox, "messages", message_id), token,
                            Literal(json.dumps(changes).encode("utf-8")), b"application/json")

    def add_attachment(self, graph_url: str, mailbox: str, token: AccessToken, message_id: str,
                       body: Source) -> Awaitable[GraphResponse]:
        """``POST .../messages/{id}/attachments`` with a JSON fileAttachment source (< 3 MB)."""
        return self.request("POST", self.user_url(graph_url, mailbox, "messages", message_id, "attachments"),
                            token, body, b"application/json")

    def create_upload_session(self, graph_url: str, mailbox: str, token: AccessToken, message_id: str, item: dict):
        url = self.user_url(graph_url, mailbox, "messages", message_id, "attachments", "createUploadSession")
        return self.request("POST", url, token, Literal(json.dumps({"AttachmentItem": item}).encode("utf-8")),
                            b"application/json")

    def upload_chunk(self, upload_url: str, data: bytes, start: int, total: int):
        """``PUT`` one range to an upload session URL: pre-authenticated, so no Authorization header."""
        end = start + len(data) - 1
        return self.request("PUT", upload_url, None, Literal(data), b"application/octet-stream",
                            extra={b"Content-Range": f"bytes {start}-{end}/{total}".encode("ascii")})

    def send_draft(self, graph_url: str, mailbox: str, token: AccessToken, message_id: str):
        """``POST .../messages/{id}/send`` with an empty body (Content-Length: 0); 202."""
        return self.request("POST", self.user_url(graph_url, mailbox, "messages", message_id, "send"), token, None, None)

    def delete_message(self, graph_url: str, mailbox: str, token: AccessToken, message_id: str):
        return self.request("DELETE", self.user_url(graph_url, mailbox, "messages", message_id), token, None, None)

    # -- the machinery --------------------------------------------------------------------

    @staticmethod
    def user_url(graph_url: str, mailbox: str, *segments: str) -> str:
        path = "/".join(quote(s, safe="@") for s in segments)
        return f"{graph_url.rstrip('/')}/{API_VERSION}/users/{quote(mailbox, safe='@')}/{path}"

    async def request(self, method: str, url: str, token: Optional[AccessToken], source: Any,
                      content_type: Optional[bytes], extra: Optional[dict] = None) -> GraphResponse:
        if self._on_request is None:
            return await self._request(method, url, token, source, content_type, extra)
        started = self._clock.seconds()
        status: Any = "error"
        try:
            response = await self._request(method, url, token, source, content_type, extra)
            status = response.code
            return response
        finally:
            try:
                self._on_request(method, url, status, self._clock.seconds() - started)
            except Exception:  # noqa: BLE001 - metrics never change a delivery
                self.log.failure("Graph request observer failed")

    async def _request(self, method: str, url: str, token: Optional[AccessToken], source: Any,
                       content_type: Optional[bytes], extra: Optional[dict] = None) -> GraphResponse:
        headers = Headers({b"Accept": [b"application/json"], b"User-Agent": [b"graphsmtp"],
                           b"client-request-id": [str(uuid.uuid4()).encode("ascii")]})
        if token is not None:
            headers.setRawHeaders(b"Authorization", [b"Bearer " + token.reveal().encode("ascii")])
        if content_type is not None:
            headers.setRawHeaders(b"Content-Type", [content_type])
        for name, value in (extra or {}).items():
            headers.setRawHeaders(name, [value])
        producer = StreamingBodyProducer(source, self._cooperator) if source is not None else None
        try:
            response = await self._http.request(
                method, url, headers=headers, data=producer, allow_redirects=False,
                timeout=self._request_timeout, reactor=self._clock)
        except (CancelledError, DeferredTimeoutError):
            raise GraphTransportError(f"no answer within {self._request_timeout:.0f}s",
                                      _sent(producer), True) from None
        except Exception as e:  # noqa: BLE001 - every transport failure is transient
            raise GraphTransportError(_describe(e), _sent(producer), False) from None
        try:
            d = response.content()
            d.addTimeout(self._body_timeout, self._clock)
            body = await d
        except Exception as e:  # noqa: BLE001
            if response.code in (200, 201, 202, 204):
                body = b""  # the answer is in the status; a lost body changes nothing
            else:
                raise GraphTransportError(f"answer {response.code} cut short ({_describe(e)})", True, False) from None
        result = _parse(response, body, self._clock, _sent(producer) if producer is not None else True)
        if result.code == 503 and self._on_unavailable is not None:
            self._on_unavailable()
        return result


def _sent(producer: Optional[StreamingBodyProducer]) -> bool:
    return producer is None or producer.finished


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = reasons[0].value
        return f"{type(e).__name__}: {type(inner).__name__}: {str(inner)[:200]}"
    return f"{type(e).__name__}: {str(e)[:200]}"


def _parse(response: Any, body: bytes, clock: IReactorTime, body_sent: bool) -> GraphResponse:
    headers = response.headers
    content_type = (headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1").lower()
    data = None
    if body and "json" in content_type:
        try:
            data = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            data = None
    code = message = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        code = data["error"].get("code")
        message = data["error"].get("message")
    elif response.code >= 400 and body:
        message = body[:300].decode("utf-8", "replace").strip()
    return GraphResponse(
        code=response.code,
        error_code=str(code) if code is not None else None,
        error_message=str(message)[:500] if message is not None else None,
        retry_after=parse_retry_after(headers.getRawHeaders(b"retry-after"), clock.seconds()),
        request_id=_first(headers, b"request-id"),
        json=data,
        location=_first(headers, b"location"),
        body_sent=body_sent,
    )


def _first(headers: Headers, name: bytes) -> Optional[str]:
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def parse_retry_after(values: Optional[list], now: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (both seen)."""
    if not values:
        return None
    text = values[0].decode("latin-1").strip() if isinstance(values[0], bytes) else str(values[0]).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # asctime form: HTTP dates are always GMT, whatever the host's zone
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


__all__ = ["GraphClient", "GraphResponse", "GraphTransportError", "parse_retry_after", "API_VERSION"]
