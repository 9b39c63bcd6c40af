"""
Reading a spooled message for Graph: its header section, the recipient plan, the sending
mailbox recorded at intake, the MIME source Graph gets, and (for the integrity check) the
file's digest — all in one read, so one trip to the file threads at most.
"""

from __future__ import annotations

from typing import Optional

import attrs

from gateway.config.graph import GraphConfig
from gateway.delivery.graph.body import Concat, FileRange, Literal, Source
from gateway.delivery.graph.integrity import message_digest
from gateway.delivery.graph.mime import (
    HeaderSection,
    RecipientPlan,
    choose_mailbox,
    plan_recipients,
    read_header_section,
)

#: Messages up to this size (the spool record's ``size``) are prepared in the reactor thread:
#: their base64 body fits one read slice of the request producer, which reads in the reactor
#: thread too.  Larger ones are read in the file thread pool.
INLINE_PREPARE_LIMIT = 48 * 1024

@attrs.frozen
class PreparedMessage:
    """What reading the header section decided (built in a thread)."""

    path: str
    section: HeaderSection
    plan: RecipientPlan
    mailbox: str
    mime: Source  # the message as Graph should get it
    mime_length: int
    #: ``"<algorithm>:<hex>"`` of the whole file, read in the same thread trip (None: not asked).
    digest: Optional[str] = None

    @property
    def draft_bcc(self) -> tuple[str, ...]:
        """Recipients a draft gets as bccRecipients: the hidden ones, in ``draft`` mode only."""
        return self.plan.hidden if self.plan.kind == "draft" else ()


def prepare_message(path: str, recipients: tuple, sender: str, config: GraphConfig,
                    sending_mailbox: Optional[str] = None, digest_algorithm: Optional[str] = None) -> PreparedMessage:
    """
    Read the header section and plan recipients (blocking: runs in a thread).  The mailbox is
    the one recorded at intake (``sending_mailbox``: decided once, executed here, never
    re-derived from the headers); only entries from before that record judge the header.

    ``digest_algorithm``: also digest the whole file for the integrity check, in this same
    thread trip.  Each trip to the file threads costs a wait for the reactor to pick up the
    result (about 10 ms per trip at 40 sends in flight, bench_drain), and that wait holds a
    mailbox's delivery slot; one trip instead of two.
    """
    section = read_header_section(path)
    plan = plan_recipients(section, recipients, config.hidden_recipients)
    mailbox = sending_mailbox or choose_mailbox(section, sender, config.send_as)
    mime: Source
    if plan.kind == "plain":
        mime = FileRange(path, 0, section.size)
    else:
        mime = Concat((Literal(plan.header + b"\r\n"), FileRange(path, section.body_offset, section.size)))
    digest = message_digest(path, digest_algorithm) if digest_algorithm else None
    return PreparedMessage(path, section, plan, mailbox, mime, mime.length, digest)


__all__ = ["INLINE_PREPARE_LIMIT", "PreparedMessage", "prepare_message"]
