"""
Graph answers → delivery outcomes, in one place so the table is reviewable.  Graph's error
bodies are described at https://learn.microsoft.com/graph/errors; the outcome is decided on
the HTTP status and Graph's ``error.code``, never on its message text.

202 is the only "delivered"; every step has its documented success code (L{SUCCESS_CODES}) and
any other 2xx is an unexpected, transient answer (possibly delivered for the sending steps).  Throttling, 5xx and transport failures are transient, with
Graph's Retry-After turned into an absolute ``retry_at``.  Client errors are permanent and keep
Graph's own error code and message for the failure record.  A failure after the request body
went out completely may have sent the message anyway (Graph has no idempotency key): it is
transient with ``possibly_delivered`` set, so the runner counts the possible duplicate.
"""

from __future__ import annotations

from typing import Optional, Union

from gateway.delivery.graph.client import GraphResponse, GraphTransportError
from gateway.delivery.interfaces import (
    CAUSE_CONNECTION,
    CAUSE_SERVICE,
    CAUSE_THROTTLED,
    Permanent,
    Transient,
)

#: What Graph answers when a step worked (https://learn.microsoft.com/graph/api/user-sendmail,
#: https://learn.microsoft.com/graph/outlook-large-attachments).  Only these count as success:
#: any other 2xx (a proxy's ``200`` page, a ``204``) is an "unexpected response".  The upload
#: session is documented as 201 in v1.0 and 200 in beta; chunk PUTs answer 200 while ranges are
#: missing and 201 for the last one (OneDrive-style sessions answer 202).
SUCCESS_CODES = {
    "sendMail": frozenset({202}),
    "send": frozenset({202}),
    "createMessage": frozenset({201}),
    "patchMessage": frozenset({200}),
    "addAttachment": frozenset({201}),
    "createUploadSession": frozenset({200, 201}),
    "upload": frozenset({200, 201, 202}),
    "deleteMessage": frozenset({204}),
}

#: Steps whose success means the message left: an unexpected answer to them is ambiguous.
SENDING_STEPS = frozenset({"sendMail", "send"})

#: Status codes after which Graph may already have accepted the message.
_AMBIGUOUS = frozenset({500, 502, 504})

#: Steps that act on a draft (or its upload session) created earlier in the same attempt.
_DRAFT_STEPS = frozenset({"patchMessage", "addAttachment", "createUploadSession", "upload", "send"})

#: Client errors by HTTP status: the enhanced status code (RFC 3463) and the remote code to
#: record when Graph's answer carries none.  Other statuses are 5.0.0 with Graph's code as is.
_REFUSALS: dict[int, tuple[str, Optional[str]]] = {
    400: ("5.6.0", "BadRequest"),
    401: ("5.7.1", "Forbidden"),
    403: ("5.7.1", "Forbidden"),
    404: ("5.1.8", "NotFound"),
    413: ("5.3.4", "RequestEntityTooLarge"),
}

#: 400s whose Graph error code says more than "bad request".
_BAD_REQUEST_STATUS = {
    "ErrorInvalidRecipients": "5.1.3",
    "ErrorInvalidRecipientsException": "5.1.3",
    "ErrorMimeContentInvalidBase64String": "5.6.0",
    "ErrorMimeContentInvalid": "5.6.0",
    "ErrorMimeContentConversionFailed": "5.6.0",
    "ErrorMessageSizeExceeded": "5.3.4",
    "InvalidInternetMessageHeader": "5.6.0",
    "InvalidInternetMessageHeaderCollection": "5.6.0",
}


def describe(response: GraphResponse) -> str:
    code = response.error_code or "no error code"
    message = (response.error_message or "").strip()
    text = f"Graph {response.code} {code}"
    if message:
        text += f": {message}"
    if response.request_id:
        text += f" (request-id {response.request_id})"
    return text


def step_succeeded(response: GraphResponse, step: str) -> bool:
    """Did Graph answer ``step`` with its documented success code?"""
    return response.code in SUCCESS_CODES[step]


def unexpected_outcome(response: GraphResponse, step: str) -> Transient:
    """
    A 2xx that is not the step's success code.  For a sending step Graph (or something in
    between) may have acted on the request, so it is possibly delivered; a retry may duplicate.
    """
    expected = "/".join(str(c) for c in sorted(SUCCESS_CODES[step]))
    return Transient(f"{step}: unexpected response {response.code} from Graph (expected {expected})"
                     + (f" (request-id {response.request_id})" if response.request_id else ""),
                     possibly_delivered=step in SENDING_STEPS)


def failure_outcome(response: GraphResponse, now: float, step: str = "sendMail") -> Union[Transient, Permanent]:
    """The outcome for a Graph answer to ``step`` that is not its success code."""
    status = response.code
    if 200 <= status < 300:
        return unexpected_outcome(response, step)
    reason = f"{step}: {describe(response)}"
    retry_at: Optional[float] = now + response.retry_after if response.retry_after is not None else None
    if status == 429 or status == 408 or status >= 500:
        return _try_again_later(response, step, reason, retry_at)
    if status in (404, 416) and step in _DRAFT_STEPS:
        # The mailbox exists (the draft was just created): the draft or upload session is what
        # went missing or out of step.  A fresh attempt builds a new one.
        return Transient(reason, retry_at=retry_at)
    return _refused(response, reason)


def _try_again_later(response: GraphResponse, step: str, reason: str, retry_at: Optional[float]) -> Transient:
    """Throttling (429), a timeout (408) or a server error (5xx)."""
    status = response.code
    possibly = status in _AMBIGUOUS and response.body_sent and step in SENDING_STEPS
    # The cause tells the queue runner whether this was a wait (429), the service being
    # down for everyone (5xx: released early once Graph answers again) or this request's
    # own trouble (408).
    cause = CAUSE_THROTTLED if status == 429 else CAUSE_SERVICE if status >= 500 else None
    return Transient(reason, retry_at=retry_at, possibly_delivered=possibly, cause=cause)


def _refused(response: GraphResponse, reason: str) -> Permanent:
    """A client error: permanent, with Graph's error code (or the status's name when it gave none)."""
    code = response.error_code
    status, fallback = _REFUSALS.get(response.code, ("5.0.0", None))
    if response.code == 400:
        status = _BAD_REQUEST_STATUS.get(code or "", status)
    return Permanent(reason, status=status, remote_code=code if fallback is None else code or fallback)


def transport_outcome(error: GraphTransportError, step: str = "sendMail") -> Transient:
    """No answer at all.  Ambiguous only when the whole body of a sending request went out."""
    possibly = error.body_sent and step in SENDING_STEPS
    return Transient(f"{step}: {error.reason}", possibly_delivered=possibly, cause=CAUSE_CONNECTION)


def is_mailbox_concurrency(response: GraphResponse) -> bool:
    text = f"{response.error_code or ''} {response.error_message or ''}"
    return "MailboxConcurrency" in text


__all__ = [
    "SUCCESS_CODES", "SENDING_STEPS", "step_succeeded", "unexpected_outcome", "failure_outcome", "transport_outcome", "describe",
    "is_mailbox_concurrency",
]
