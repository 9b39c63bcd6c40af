"""
The delivery side's contract: how a queued message leaves the gateway, and who hears about it.

A deliverer knows nothing about SMTP sessions; it gets a spool entry (message file + envelope)
and answers with an outcome.  The queue runner applies the outcome to the spool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Optional, Union

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

# The spool implements these and owns them (storage sits below delivery); re-exported here
# because deliverers meet them as part of their contract.
from gateway.spool.interfaces import IDraftJournal, IEntryQuarantine

if TYPE_CHECKING:
    from gateway.spool.entry import SpoolEntry

#: Transient causes.  A *wait* is not a failure of the message: it never advances the message's
#: backoff step.  A *shared* cause hits every message of a tenant alike (the next hop is down,
#: not this message's fault): the first delivery that succeeds afterwards makes the messages
#: deferred by it due at once (prompt drain after an outage), and so does a restart.
CAUSE_THROTTLED = "throttled"      # the next hop asked us to wait (429 + Retry-After, pacing)
CAUSE_PAUSED = "paused"            # the tenant is paused (credential trouble an admin must fix)
CAUSE_TOKEN = "token"              # the token endpoint is unreachable or failing
CAUSE_SERVICE = "service"          # the next hop answered 5xx
CAUSE_CONNECTION = "connection"    # no answer at all (refused, reset, timeout, TLS)
WAIT_CAUSES = frozenset({CAUSE_THROTTLED, CAUSE_PAUSED})
SHARED_CAUSES = frozenset({CAUSE_TOKEN, CAUSE_SERVICE, CAUSE_CONNECTION})


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

    ``cause`` says what kind of trouble it was (``CAUSE_*`` above, ``None`` for trouble of this
    message alone): waits do not advance the message's backoff step, shared causes are
    released early when the tenant recovers.  ``pause_until`` asks the runner to start nothing
    for this message's sending mailbox (``pause_scope="mailbox"``) or for every mailbox of its
    tenant (``pause_scope="tenant"``) before that absolute time; queued messages of a paused
    mailbox then cost nothing until it ends.
    """

    reason: str
    retry_at: Optional[float] = None
    possibly_delivered: bool = False
    attempted: bool = True
    cause: Optional[str] = None
    pause_until: Optional[float] = None
    pause_scope: str = "mailbox"


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


@attrs.frozen
class MailboxKey:
    """
    Which sending mailbox an entry goes out through, within which tenant (``tenant`` is the
    entry's credential reference, ``None`` for the gateway's default tenant).  The queue runner
    keeps one ready queue per key.
    """

    tenant: Optional[str]
    mailbox: str


@attrs.frozen
class MailboxLimits:
    """
    What one sending mailbox may do: ``concurrency`` deliveries in flight, ``rate`` starts per
    minute (``None``: no pacing) with ``burst`` back to back.
    """

    concurrency: Optional[int] = None
    rate: Optional[float] = None
    burst: int = 1


class IMailboxRouting(Interface):
    """
    Optional for a deliverer: lets the queue runner keep one ready queue per sending mailbox,
    so it only ever hands over what a mailbox can start now.  Without it every entry shares one
    queue bounded only by ``[queue] concurrency``.
    """

    mailbox_limits = Attribute("The L{MailboxLimits} of every sending mailbox.")

    def mailbox_key(entry) -> Hashable:
        """
        The L{MailboxKey} of ``entry``, decided cheaply from the entry alone (no I/O): the
        ``sending_mailbox`` recorded at intake, else a fallback the deliverer documents.
        """


class IDeliveryObserver(Interface):
    """
    Told about every outcome, for audit logs, notifications and webhooks.

    Exceptions (and failed Deferreds) from observers are logged and never affect delivery.
    """

    def delivered(entry: "SpoolEntry", outcome: Delivered) -> None:
        """The message left the gateway."""

    def deferred(entry: "SpoolEntry", outcome: Transient) -> None:
        """A transient failure; the message stays queued for another attempt."""

    def failed(entry: "SpoolEntry", outcome: Permanent) -> Optional[Deferred]:
        """A permanent failure or queue lifetime expiry; the message moved to failed/."""


__all__ = [
    "Delivered", "Transient", "Permanent", "Outcome", "IDeliverer", "IDeliveryObserver", "IDraftJournal",
    "IEntryQuarantine", "IMailboxRouting",
    "MailboxKey", "MailboxLimits", "CAUSE_THROTTLED", "CAUSE_PAUSED", "CAUSE_TOKEN", "CAUSE_SERVICE",
    "CAUSE_CONNECTION", "WAIT_CAUSES", "SHARED_CAUSES",
]
