"""
The delivery side's contract: how a queued message leaves the gateway, and who hears about it.

A deliverer knows nothing about SMTP sessions; it gets a spool entry (message file + envelope)
and answers with an outcome.  The queue runner applies the outcome to the spool.
"""

from __future__ import annotations

from typing import Optional, Union

import attrs
from zope.interface import Interface


@attrs.frozen
class Delivered:
    """The next hop took responsibility for the message (Graph answered 202, capture wrote it)."""

    detail: str = ""


@attrs.frozen
class Transient:
    """
    Try again later.  ``retry_at`` is an absolute POSIX time the deliverer wants honoured
    (for example from Graph's Retry-After); ``None`` lets the queue runner's backoff decide.
    ``possibly_delivered`` marks ambiguous failures (timeout after the request body was sent):
    a retry may duplicate the message, and that is counted and logged.
    ``attempted=False`` means the deliverer did not even try (the sending mailbox is being
    paced or is paused by the next hop): the runner reschedules at ``retry_at`` without
    counting an attempt, rewriting the spool entry or telling observers.
    """

    reason: str
    retry_at: Optional[float] = None
    possibly_delivered: bool = False
    attempted: bool = True


@attrs.frozen
class Permanent:
    """
    Never going to work (mailbox not found, send-as denied, message too large).

    ``status`` is an RFC 3463 enhanced status code such as ``"5.1.1"``, used in the failure
    record and in any delivery status notification.  ``remote_code`` keeps the next hop's own
    error code (for example Graph's ``ErrorSendAsDenied``) for the log and the failure record.
    """

    reason: str
    status: str = "5.0.0"
    remote_code: Optional[str] = None


Outcome = Union[Delivered, Transient, Permanent]


class IDeliverer(Interface):
    """Hands one spool entry to the next hop."""

    def deliver(entry):
        """
        Deliver ``entry`` (a L{gateway.spool.entry.SpoolEntry}).

        Returns a Deferred that fires with L{Delivered}, L{Transient} or L{Permanent}.  It
        must not errback for expected trouble: an unexpected exception is treated by the queue
        runner as L{Transient}, so nothing is ever lost to a bug in a deliverer.
        """


class IDraftJournal(Interface):
    """
    Where a deliverer durably notes the next hop's draft of a message before filling it, so a
    crash or a failed attempt never leaves it behind: the next attempt (in this process or
    after a restart) finds the id and deletes (or resumes) the draft first.  Implemented by the
    spool (L{gateway.spool.store.DirectorySpool} keeps it in ``SpoolEntry.draft_id``); the
    deliverer gets it injected and never imports the spool.
    """

    def note_draft(entry, draft_id):
        """
        Record that ``entry`` (a L{gateway.spool.entry.SpoolEntry}) now has the draft
        ``draft_id`` (``None``: no draft any more).  Returns a Deferred that fires once the
        record is durable (fsynced), or fails if it could not be written.
        """

    def draft_of(entry):
        """
        The draft id last recorded for ``entry``: the journal's own memory wins over
        ``entry.draft_id``, which may come from a copy read before the last note.
        """


class IEntryQuarantine(Interface):
    """
    How a deliverer takes an entry it must never send (its message file no longer matches the
    digest taken at intake) out of the queue, kept for an admin.  Implemented by the spool.
    """

    def quarantine(entry, reason: str):
        """
        Move ``entry``'s files aside with ``reason``; Deferred firing with where they went.
        Once it fired, the entry is no longer queued.
        """


class IDeliveryObserver(Interface):
    """
    Told about every outcome, for audit logs, notifications and webhooks.

    Exceptions (and failed Deferreds) from observers are logged and never affect delivery.
    """

    def delivered(entry, outcome) -> None:
        """The message left the gateway."""

    def deferred(entry, outcome) -> None:
        """A transient failure; the message stays queued for another attempt."""

    def failed(entry, outcome) -> None:
        """A permanent failure or queue lifetime expiry; the message moved to failed/."""


__all__ = [
    "Delivered", "Transient", "Permanent", "Outcome", "IDeliverer", "IDeliveryObserver", "IDraftJournal",
    "IEntryQuarantine",
]
