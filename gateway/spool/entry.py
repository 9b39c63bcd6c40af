"""
Values that describe one accepted message: its envelope, where it came from, and its delivery state.

These are the meeting point of the intake side (SMTP, sendmail) and the delivery side (capture,
Graph): neither side imports the other, both import this module.  Everything here is immutable;
a state change produces a new value that the spool persists atomically.
"""

from __future__ import annotations

from typing import Optional

import attrs


@attrs.frozen
class Envelope:
    """
    The SMTP envelope as accepted.

    ``sender`` is the reverse-path without angle brackets; the null reverse-path (bounces) is
    ``""``.  ``recipients`` are exactly the forward-paths the gateway answered 250 to, in order,
    without duplicates.  Delivery must reach these and only these (ARCHITECTURE invariant 3).
    """

    sender: str
    recipients: tuple[str, ...]


@attrs.frozen
class Provenance:
    """
    Who handed the message over and how; recorded for the Received header, logs and policies.

    ``auth_identity`` is the authenticated login (``None`` when the client did not
    authenticate).  ``listener`` is the configured listener name (``"sendmail"`` for the
    command-line path).  ``credential_ref`` names the delivery credentials to use when they are
    not the gateway's default tenant (Entra pass-through logins); ``None`` means the default.
    """

    client_address: str
    client_name: str
    listener: str
    tls: bool = False
    auth_identity: Optional[str] = None
    credential_ref: Optional[str] = None
    # The gateway that accepted the message ([cluster] node_id, else its host name): with
    # several gateways, queue id and node say unambiguously where a message came in, also
    # after graphsmtp-queue adopt moved it to another node.  None in older records.
    node: Optional[str] = None

    def at_node(self, node: Optional[str]) -> "Provenance":
        """
        This provenance as accepted by gateway ``node``: what ``attrs.evolve(self, node=node)``
        gives, built directly (once per accepted message; evolve looks up every field by name).
        A field added here must be added to this copy too (a test checks the field list).
        """
        return Provenance(self.client_address, self.client_name, self.listener, self.tls, self.auth_identity,
                          self.credential_ref, node)


#: Attempt causes (see L{gateway.delivery.interfaces}) that are waits, not failures, and causes
#: shared by a whole tenant.  Repeated here as plain strings: the spool does not import delivery.
WAIT_CAUSES = frozenset({"throttled", "paused"})
SHARED_CAUSES = frozenset({"token", "service", "connection"})


@attrs.frozen
class AttemptRecord:
    """
    One delivery attempt that did not deliver, kept so an admin can see why a message is still
    queued.  ``cause`` is the kind of trouble (``None`` in older records and for trouble of this
    message alone): waits (a honoured 429) do not count towards the backoff step.
    """

    at: float
    reason: str
    cause: Optional[str] = None

    @property
    def counts_as_failure(self) -> bool:
        return self.cause not in WAIT_CAUSES


@attrs.frozen
class SpoolEntry:
    """
    One queued message as the queue runner and deliverers see it.

    ``message_path`` is the absolute path of the message file: the RFC 5322 message with CRLF
    line endings, byte for byte as received apart from the gateway's own headers (Received and,
    when missing, Message-ID/Date) and any header edits made by policies before spooling.
    Deliverers open it themselves (in a thread or through a producer), so message bodies are
    never held in memory whole.  ``size`` is its length in bytes.
    """

    queue_id: str
    envelope: Envelope
    provenance: Provenance
    received_at: float
    message_path: str
    size: int
    attempts: int = 0
    next_attempt_at: float = 0.0
    history: tuple[AttemptRecord, ...] = ()
    # Decided once at intake and executed as recorded (ARCHITECTURE "decide once, record,
    # execute"): the canonical mailbox Graph sends through, chosen by
    # gateway.mail.message.choose_sending_mailbox from the judged header section (SMTP intake
    # and sendmail alike).  Canonical form (gateway.mail.canonical): local part and domain
    # lower-cased, the local part unquoted when it is a dot-atom (else quoted, with \ and "
    # escaped), no final dot on the domain, a +tag kept ("alice+x@corp.example").  ``None``
    # only for entries written by an older gateway, which the deliverer then judges with the
    # same grammar.
    sending_mailbox: Optional[str] = None
    # "sha256:<hex>" of the message file as committed; verified before each send so a file
    # changed on disk is quarantined instead of delivered garbled.  ``None`` for old entries.
    message_digest: Optional[str] = None
    # Graph id of a draft created for a large message, recorded before its first upload so a
    # retry or a restart can delete (or resume) it instead of leaving it in the mailbox.
    draft_id: Optional[str] = None

    @property
    def failures(self) -> int:
        """Failed attempts that set the backoff step (waits such as a honoured 429 do not)."""
        return sum(1 for h in self.history if h.counts_as_failure)

    @property
    def deferred_by_shared_cause(self) -> bool:
        """The last attempt failed for a reason shared by the whole tenant (next hop down)."""
        return bool(self.history) and self.history[-1].cause in SHARED_CAUSES

    @property
    def due_hint(self) -> float:
        """
        The earliest time the runner may have to look at this entry after a restart: its next
        attempt, or at once when it waits out a shared outage (a restart makes it due now).
        """
        if self.deferred_by_shared_cause:
            return min(self.next_attempt_at, self.history[-1].at)
        return self.next_attempt_at


__all__ = ["Envelope", "Provenance", "AttemptRecord", "SpoolEntry", "WAIT_CAUSES", "SHARED_CAUSES"]
