"""
The draft path of the Graph deliverer: what a message takes when one ``sendMail`` request
cannot carry it exactly.

A draft is created from the MIME (the skeleton of a large message, its biggest attachments
cut out by L{gateway.delivery.graph.structure}), its hidden recipients are set with a PATCH
(``hidden_recipients = "draft"``), the cut-out attachments are added (one POST each when
small, an upload session in chunks otherwise), then the draft is sent.  The steps are
described in "Attach large files to Outlook messages"
(https://learn.microsoft.com/graph/outlook-large-attachments).

A draft must never be left behind in the mailbox: its id is written to the spool record
(L{IDraftJournal}) before anything is uploaded into it, a failed attempt deletes it, and the
next attempt deletes one an earlier (perhaps killed) attempt recorded before sending again.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.config.graph import GraphConfig
from gateway.delivery.graph.attempt import Attempt, StepFailed
from gateway.delivery.graph.body import (
    Base64Of,
    Concat,
    DecodedRange,
    Literal,
    Source,
    decoded_length,
    read_exactly,
)
from gateway.delivery.graph.client import GraphClient, GraphResponse, GraphTransportError
from gateway.delivery.graph.outcomes import describe, step_succeeded, transport_outcome
from gateway.delivery.graph.structure import Part
from gateway.delivery.interfaces import Delivered, Outcome, Permanent, Transient

#: Graph refuses upload sessions for attachments under 3 MB
#: (https://learn.microsoft.com/graph/api/attachment-createuploadsession): smaller ones go
#: in one ``POST .../attachments`` each.
UPLOAD_SESSION_MINIMUM = 3_000_000


class DraftSending:
    """
    The draft steps of L{gateway.delivery.graph.deliverer.GraphDeliverer}, kept apart because
    they are a job of their own (create, fill, send and clean up a draft).  They use the
    deliverer's parts, read when a step runs (the wiring sets ``journal`` after construction),
    and its authenticated call and answer-to-outcome steps.
    """

    log: Logger
    config: GraphConfig
    client: GraphClient
    journal: Any  # IDraftJournal
    _blocking: Callable[..., Deferred]

    async def _call(self, attempt: Attempt, step: str, method: Callable, *args: Any) -> GraphResponse:
        raise NotImplementedError

    def _sent(self, attempt: Attempt, response: GraphResponse, step: str) -> Outcome:
        raise NotImplementedError

    def _step_failure(self, attempt: Attempt, response: GraphResponse, step: str,
                      hint: bool = False) -> Transient | Permanent:
        raise NotImplementedError

    async def _send_draft(self, attempt: Attempt, plan_hidden: tuple[str, ...], path: str, mime: Source,
                          attachments: tuple[Part, ...]) -> Outcome:
        """
        Create the draft from ``mime``, then fill and send it.  ``plan_hidden``: recipients set
        on the draft as bccRecipients; ``attachments``: parts of the file at ``path`` to add.
        """
        response = await self._call(attempt, "createMessage", self.client.create_mime_draft, mime)
        message_id = _message_id(response)
        if not step_succeeded(response, "createMessage"):
            if message_id and 200 <= response.code < 300:
                await self._discard_draft(attempt, message_id)  # a draft may exist all the same
            return self._step_failure(attempt, response, "createMessage", hint=True)
        if not message_id:
            return Transient("createMessage: Graph answered without a message id")
        not_recorded = await self._record_draft(attempt, message_id)
        if not_recorded is not None:
            return not_recorded
        try:
            response = await self._fill_and_send(attempt, message_id, plan_hidden, path, attachments)
        except StepFailed as e:
            if not getattr(e.outcome, "possibly_delivered", False):
                await self._discard_draft(attempt, message_id)
            raise
        except BaseException:
            await self._discard_draft(attempt, message_id)
            raise
        outcome = self._sent(attempt, response, "send")
        if not isinstance(outcome, Delivered) and not getattr(outcome, "possibly_delivered", False):
            await self._discard_draft(attempt, message_id)
        return outcome

    async def _record_draft(self, attempt: Attempt, message_id: str) -> Optional[Transient]:
        """
        Note the draft's id durably, before anything is uploaded into it: a crash from here on
        leaves the id in the spool record, and the next attempt deletes the draft first.
        """
        try:
            await self.journal.note_draft(attempt.entry, message_id)
        except Exception as e:  # noqa: BLE001 - without the note, a crash would orphan the draft
            await self._discard_draft(attempt, message_id)
            return Transient(f"createMessage: could not record the draft id in the spool ({e})")
        return None

    async def _fill_and_send(self, attempt: Attempt, message_id: str, hidden: tuple[str, ...], path: str,
                             attachments: tuple[Part, ...]) -> GraphResponse:
        """Hidden recipients, then attachments, then send: Graph's answer to the send."""
        if hidden:
            changes = {"bccRecipients": [{"emailAddress": {"address": a}} for a in hidden]}
            response = await self._call(attempt, "patchMessage", self.client.patch_message, message_id, changes)
            if not step_succeeded(response, "patchMessage"):
                raise StepFailed(self._step_failure(attempt, response, "patchMessage", hint=True))
        for part in attachments:
            await self._attach(attempt, message_id, path, part)
        return await self._call(attempt, "send", self.client.send_draft, message_id)

    async def _attach(self, attempt: Attempt, message_id: str, path: str, part: Part) -> None:
        """Add one cut-out part, decoded from its byte range of the spool file."""
        length = await self._blocking(decoded_length, path, part.body_start, part.body_end, part.encoding)
        content = DecodedRange(path, part.body_start, part.body_end, part.encoding, length)
        name = part.filename or _default_name(part)
        inline = part.is_inline and part.content_id is not None
        if length < UPLOAD_SESSION_MINIMUM:
            await self._add_attachment(attempt, message_id, part, name, inline, content)
            return
        item: dict[str, Any] = {"attachmentType": "file", "name": name, "size": length, "contentType": part.content_type}
        if inline:
            item.update(isInline=True, contentId=part.content_id)
        response = await self._call(attempt, "createUploadSession", self.client.create_upload_session, message_id, item)
        upload_url = (response.json or {}).get("uploadUrl") if isinstance(response.json, dict) else None
        if not step_succeeded(response, "createUploadSession") or not upload_url:
            raise StepFailed(self._step_failure(attempt, response, "createUploadSession"))
        await self._upload(attempt, upload_url, content)

    async def _add_attachment(self, attempt: Attempt, message_id: str, part: Part, name: str, inline: bool,
                              content: DecodedRange) -> None:
        """A small attachment: one JSON request, its content base64-encoded as it is produced."""
        head = {"@odata.type": "#microsoft.graph.fileAttachment", "name": name,
                "contentType": part.content_type, "isInline": inline}
        if inline:
            head["contentId"] = part.content_id
        prefix = json.dumps(head)[:-1].encode("utf-8") + b', "contentBytes": "'
        source = Concat((Literal(prefix), Base64Of(content), Literal(b'"}')))
        response = await self._call(attempt, "addAttachment", self.client.add_attachment, message_id, source)
        if not step_succeeded(response, "addAttachment"):
            raise StepFailed(self._step_failure(attempt, response, "addAttachment"))

    async def _upload(self, attempt: Attempt, upload_url: str, content: DecodedRange) -> None:
        """
        The content into an upload session, in order.  Exactly ``upload_chunk_size`` bytes per
        PUT (the last one fewer), never past the size the session was created with.  The
        upload URL is pre-authenticated: no token goes with it.
        """
        length = content.length
        reader = content.open()
        try:
            position = 0
            while position < length:
                want = min(self.config.upload_chunk_size, length - position)
                chunk = await self._blocking(read_exactly, reader, want)
                if not chunk:
                    raise StepFailed(Transient("upload: the attachment ended early (file changed?)"))
                try:
                    response = await self.client.upload_chunk(upload_url, chunk, position, length)
                except GraphTransportError as e:
                    raise StepFailed(transport_outcome(e, "upload")) from None
                if not step_succeeded(response, "upload"):
                    raise StepFailed(self._step_failure(attempt, response, "upload"))
                position += len(chunk)
        finally:
            reader.close()

    async def _discard_draft(self, attempt: Attempt, message_id: str) -> bool:
        """
        Best effort: an abandoned draft would clutter the mailbox's Drafts folder.  True when
        it is gone (204, or 404: already gone); the journal then forgets it.  Otherwise its id
        stays recorded and the next attempt tries again.
        """
        try:
            response = await self.client.delete_message(
                attempt.credentials.graph_url, attempt.mailbox, attempt.token, message_id)
        except Exception as e:  # noqa: BLE001
            self.log.info("graph {queue_id}: could not delete draft ({err})", queue_id=attempt.entry.queue_id,
                          err=type(e).__name__)
            return False
        if not (step_succeeded(response, "deleteMessage") or response.code == 404):
            self.log.info("graph {queue_id}: could not delete draft ({err})", queue_id=attempt.entry.queue_id,
                          err=describe(response))
            return False
        if self.journal.draft_of(attempt.entry) == message_id:
            await self._forget_draft(attempt)
        return True

    async def _delete_leftover_draft(self, attempt: Attempt) -> Optional[Transient]:
        """
        An earlier attempt (maybe a process killed mid-upload) recorded a draft it never sent
        or deleted: delete it before sending again, so the mailbox never keeps an orphan.  If
        Graph cannot be asked now, the message waits rather than leave a second draft.
        """
        draft_id = self.journal.draft_of(attempt.entry)
        if not draft_id:
            return None
        response = await self._call(attempt, "deleteMessage", self.client.delete_message, draft_id)
        if step_succeeded(response, "deleteMessage"):
            self.log.info("graph {queue_id}: deleted the draft an earlier attempt left behind",
                          queue_id=attempt.entry.queue_id)
        elif response.code == 404:
            self.log.debug("graph {queue_id}: the draft an earlier attempt recorded is gone already",
                           queue_id=attempt.entry.queue_id)
        else:
            outcome = self._step_failure(attempt, response, "deleteMessage")
            if isinstance(outcome, Transient):
                return attrs.evolve(outcome, reason=f"deleting a leftover draft: {outcome.reason}")
            # Graph will not delete it (permissions changed?): say so, and do not hold the mail back.
            self.log.warn("graph {queue_id}: could not delete the draft left by an earlier attempt ({err}); "
                          "it stays in {mailbox}'s Drafts folder", queue_id=attempt.entry.queue_id,
                          err=describe(response), mailbox=attempt.mailbox)
        await self._forget_draft(attempt)
        return None

    async def _forget_draft(self, attempt: Attempt) -> None:
        try:
            await self.journal.note_draft(attempt.entry, None)
        except Exception as e:  # noqa: BLE001 - harmless: a stale id costs the next attempt one 404
            self.log.debug("graph {queue_id}: could not clear the draft id ({err})",
                           queue_id=attempt.entry.queue_id, err=str(e))


def _message_id(response: GraphResponse) -> Optional[str]:
    data = response.json
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def _default_name(part: Part) -> str:
    subtype = part.content_type.split("/", 1)[-1] or "bin"
    return f"attachment.{subtype}"


__all__ = ["DraftSending", "UPLOAD_SESSION_MINIMUM"]
