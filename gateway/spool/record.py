"""
The envelope/state record: the small JSON file kept beside each message file.

On-disk format (one JSON object, UTF-8, ASCII-only because non-ASCII is escaped)::

    {
      "format": 1,                      # bumped on incompatible change
      "queue_id": "0SJ5Q4ZP1A2B3C4D5E6",
      "sender": "app@example.com",      # reverse-path, "" for the null sender
      "recipients": ["a@example.com"],  # exactly the accepted forward-paths, in order
      "received_at": 1700000000.123456, # POSIX time of acceptance (start of queue lifetime)
      "client_address": "192.0.2.7",
      "client_name": "printer.example", # HELO/EHLO name as validated by intake
      "listener": "submission",         # listener name, "sendmail" for the command line
      "tls": true,
      "auth_identity": "scanner",       # null when not authenticated
      "credential_ref": null,           # delivery credentials name, null = default tenant
      "node": "gw1",                    # the gateway that accepted it; absent in older records
      "size": 10240,                    # bytes in the message file
      "attempts": 2,                    # failed delivery attempts so far
      "next_attempt_at": 1700000900.0,  # POSIX time; 0 or the past means "due now"
      "history": [{"at": 1700000060.0, "reason": "Graph 503", "cause": "service"}],
                                        # one per attempt that did not deliver; "cause" is
                                        # optional (older records): throttled, paused, token,
                                        # service, connection
      "sending_mailbox": "app@example.com",  # decided at intake; null in older records
      "message_digest": "sha256:…",     # of the message file at commit; null in older records
      "draft_id": null,                 # Graph draft of a large message being uploaded
      "record_digest": "sha256:…"       # over the fields intake decided; checked on every read
    }

Unknown keys are ignored when reading, so a newer gateway can add fields and an older queue
tool can still list the spool.  The record holds no secrets: ``credential_ref`` is a name.

Why the record is separate from the message: the message file must stay byte for byte what
will be delivered, and state changes (attempts, next attempt) must be atomic without rewriting
a 20 MB message — a new record is written and renamed over the old one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.spool.entry import AttemptRecord, Envelope, Provenance, SpoolEntry
from gateway.spool.queueid import is_queue_id

RECORD_FORMAT = 1


class RecordError(ValueError):
    """The record cannot be understood; the entry goes to quarantine."""


def record_fields(entry: SpoolEntry) -> dict[str, Any]:
    """The JSON object for ``entry`` (``message_path`` is not stored: it follows from the id)."""
    env, prov = entry.envelope, entry.provenance
    return {
        "format": RECORD_FORMAT,
        "queue_id": entry.queue_id,
        "sender": env.sender,
        "recipients": list(env.recipients),
        "received_at": entry.received_at,
        "client_address": prov.client_address,
        "client_name": prov.client_name,
        "listener": prov.listener,
        "tls": prov.tls,
        "auth_identity": prov.auth_identity,
        "credential_ref": prov.credential_ref,
        "node": prov.node,
        "size": entry.size,
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at,
        "history": [_history_item(h) for h in entry.history],
        "sending_mailbox": entry.sending_mailbox,
        "message_digest": entry.message_digest,
        "draft_id": entry.draft_id,
        "record_digest": record_digest(entry),
    }


#: What intake decided and no later state change may alter: who handed the message over, to
#: whom it goes, as which mailbox, and which bytes.  (Delivery state, the received time that
#: requeue and hold move forward, and the draft id change legitimately and are left out.)
#: The digest covers their values as one compact JSON array in this order (L{_sealed_values}).
_SEALED = ("queue_id", "sender", "recipients", "client_address", "client_name", "listener", "tls",
           "auth_identity", "credential_ref", "node", "size", "sending_mailbox", "message_digest")

#: One encoder for records and digests: compact, ASCII-only (non-ASCII escaped).  Built once:
#: ``json.dumps`` with any option builds a new encoder for every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def _sealed_values(entry: SpoolEntry) -> list[Any]:
    """The values of L{_SEALED}, in that order (a test holds the two lists together)."""
    env, prov = entry.envelope, entry.provenance
    return [entry.queue_id, env.sender, list(env.recipients), prov.client_address, prov.client_name,
            prov.listener, prov.tls, prov.auth_identity, prov.credential_ref, prov.node, entry.size,
            entry.sending_mailbox, entry.message_digest]


def record_digest(entry: SpoolEntry) -> str:
    """
    ``sha256:<hex>`` over the sealed fields, written with every record and verified on every
    read: a record edited outside graphsmtp (a recipient added in place, say) is quarantined,
    never delivered.  Not a signature — whoever can write the spool can recompute it — but it
    turns a silent change into a loud one, like the message digest does for the message.
    """
    sealed = _COMPACT.encode(_sealed_values(entry))
    return "sha256:" + hashlib.sha256(sealed.encode("ascii")).hexdigest()


#: The algorithm of the message digest intake records (``message_digest``).
DIGEST_ALGORITHM = "sha256"


def file_digest(path: str, algorithm: str = DIGEST_ALGORITHM) -> str:
    """``"<algorithm>:<hex>"`` of a whole file, read in blocks (blocking: call it in a thread)."""
    with open(path, "rb") as f:
        return f"{algorithm}:{hashlib.file_digest(f, algorithm).hexdigest()}"


def _history_item(h: AttemptRecord) -> dict[str, Any]:
    item: dict[str, Any] = {"at": h.at, "reason": h.reason}
    if h.cause is not None:
        item["cause"] = h.cause
    return item


def encode_record(entry: SpoolEntry) -> bytes:
    """The record's bytes: one pass over the entry, one encoder call (and one for the digest)."""
    return _COMPACT.encode(record_fields(entry)).encode("ascii")


def _typed(data: dict, key: str, kind: Any, optional: bool = False, added_later: bool = False) -> Any:
    if key not in data and added_later:
        return None
    if key not in data:
        raise RecordError(f"missing {key!r}")
    value = data[key]
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RecordError(f"{key!r} has the wrong type")
    return value


def decode_record(data: bytes, message_path: str, expected_queue_id: str | None = None) -> SpoolEntry:
    """
    Parse a record into a L{SpoolEntry} whose message lives at ``message_path``.

    Raises L{RecordError} for anything that is not a well-formed record of a known format, so
    the caller can quarantine the entry instead of crashing on it.
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RecordError("not a JSON object")
    fmt = obj.get("format")
    if fmt != RECORD_FORMAT:
        raise RecordError(f"unknown record format {fmt!r}")
    queue_id = _typed(obj, "queue_id", str)
    if not is_queue_id(queue_id) or (expected_queue_id is not None and queue_id != expected_queue_id):
        raise RecordError(f"queue id {queue_id!r} does not match the file name")
    recipients = _typed(obj, "recipients", list)
    if not recipients or not all(isinstance(r, str) for r in recipients):
        raise RecordError("'recipients' must be a non-empty list of strings")
    history = []
    for h in _typed(obj, "history", list):
        if not isinstance(h, dict):
            raise RecordError("'history' items must be objects")
        history.append(AttemptRecord(at=_typed(h, "at", float), reason=_typed(h, "reason", str),
                                     cause=_typed(h, "cause", str, optional=True, added_later=True)))
    entry = SpoolEntry(
        queue_id=queue_id,
        envelope=Envelope(sender=_typed(obj, "sender", str), recipients=tuple(recipients)),
        provenance=Provenance(
            client_address=_typed(obj, "client_address", str),
            client_name=_typed(obj, "client_name", str),
            listener=_typed(obj, "listener", str),
            tls=_typed(obj, "tls", bool),
            auth_identity=_typed(obj, "auth_identity", str, optional=True),
            credential_ref=_typed(obj, "credential_ref", str, optional=True),
            node=_typed(obj, "node", str, optional=True, added_later=True),
        ),
        received_at=_typed(obj, "received_at", float),
        message_path=message_path,
        size=_typed(obj, "size", int),
        attempts=_typed(obj, "attempts", int),
        next_attempt_at=_typed(obj, "next_attempt_at", float),
        history=tuple(history),
        sending_mailbox=_typed(obj, "sending_mailbox", str, optional=True, added_later=True),
        message_digest=_typed(obj, "message_digest", str, optional=True, added_later=True),
        draft_id=_typed(obj, "draft_id", str, optional=True, added_later=True),
    )
    stored = _typed(obj, "record_digest", str, optional=True, added_later=True)
    if stored is not None and stored != record_digest(entry):
        raise RecordError("record digest mismatch: the record was changed outside graphsmtp")
    return entry


__all__ = ["RECORD_FORMAT", "RecordError", "record_fields", "record_digest", "encode_record", "decode_record"]
