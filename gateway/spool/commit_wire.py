"""
How a batch of commits travels to the spool's commit process (L{gateway.spool.commit_process}):
as tuples of plain values, not as pickled attrs objects.

Why: pickle runs Python code for every attrs object it meets (``__getstate__`` when writing,
``__setstate__`` when reading), and a request is four of them (the request, its entry, the
entry's envelope and provenance).  In a warm loop one 10 KB request took 14 µs to pickle and
20 µs to read back, against 2 and 6 µs as plain tuples; in the daemon, where these run cold
between network events, the attrs form measured 47-63 µs each way (issue 13).  Both ends are
on the path of every small message: the reactor thread writes the batch, and the child reads
it before it can start the commit.

The layout is spelt out field by field, so a field added to L{SpoolEntry}, L{Provenance},
L{Envelope}, L{AttemptRecord} or L{CommitRequest} must be added here too: a test checks the
field lists, that the tuple has one value per field, and that a request with every field set
comes back equal.  A batch carries L{FORMAT}, so a child started from code newer or older than
its parent's (the package was upgraded while the daemon ran, and the child was started again)
refuses the batch instead of storing something else: it says why and exits, and the parent,
after a few such children, commits in its own threads (L{gateway.spool.commit_process}).
"""

from __future__ import annotations

import pickle
from typing import Any

from gateway.spool.accept import CommitRequest
from gateway.spool.entry import AttemptRecord, Envelope, Provenance, SpoolEntry

#: Changes whenever the tuples below change shape.
FORMAT = 1


class WireError(ValueError):
    """A batch this process cannot read."""


def encode_batch(requests: list[CommitRequest]) -> bytes:
    """``requests`` (messages in memory: a temp file is open in this process only) as bytes."""
    return pickle.dumps((FORMAT, [_request_values(request) for request in requests]),
                        protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(data: bytes) -> list[CommitRequest]:
    """The requests L{encode_batch} wrote; L{WireError} for anything else."""
    # The errors name no value from the bytes: they may hold a message, and they are logged.
    try:
        decoded = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - whatever the bytes were, they are not a batch
        raise WireError(f"not a commit batch (unreadable: {type(e).__name__})") from None
    if not (type(decoded) is tuple and len(decoded) == 2 and type(decoded[0]) is int and type(decoded[1]) is list):
        raise WireError(f"not a commit batch in any format of this gateway's (a {type(decoded).__name__}): the "
                        "package was changed while the daemon ran; restart the daemon")
    version, batch = decoded
    if version != FORMAT:
        raise WireError(f"a commit batch in format {version}, and this process reads format {FORMAT}: the package "
                        "was changed while the daemon ran; restart the daemon")
    try:
        return [_request(values) for values in batch]
    except Exception as e:  # noqa: BLE001 - a batch of something else
        raise WireError(f"not a commit batch (malformed: {type(e).__name__})") from None


def _request_values(request: CommitRequest) -> tuple[Any, ...]:
    if request.temp is not None:
        raise WireError("a message in a temp file is committed by the process that has it open")
    entry, envelope, provenance = request.entry, request.entry.envelope, request.entry.provenance
    return (request.where, request.data,
            entry.queue_id, envelope.sender, envelope.recipients,
            provenance.client_address, provenance.client_name, provenance.listener, provenance.tls,
            provenance.auth_identity, provenance.credential_ref, provenance.node,
            entry.received_at, entry.message_path, entry.size, entry.attempts, entry.next_attempt_at,
            tuple((attempt.at, attempt.reason, attempt.cause) for attempt in entry.history),
            entry.sending_mailbox, entry.message_digest, entry.draft_id)


def _request(values: tuple[Any, ...]) -> CommitRequest:
    (where, data, queue_id, sender, recipients, client_address, client_name, listener, tls, auth_identity,
     credential_ref, node, received_at, message_path, size, attempts, next_attempt_at, history,
     sending_mailbox, message_digest, draft_id) = values
    entry = SpoolEntry(queue_id, Envelope(sender, recipients),
                       Provenance(client_address, client_name, listener, tls, auth_identity, credential_ref, node),
                       received_at, message_path, size, attempts, next_attempt_at,
                       tuple(AttemptRecord(*attempt) for attempt in history),
                       sending_mailbox, message_digest, draft_id)
    return CommitRequest(entry, where, None, data)


__all__ = ["FORMAT", "WireError", "decode_batch", "encode_batch"]
