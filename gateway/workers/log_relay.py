"""
A worker's log events on their way to the main process, which writes them into its own log
(text or JSON, as configured there) with ``[worker <pid>]`` in front.

Twisted's JSON form of an event (``eventAsJSON`` / ``eventFromJSON``) keeps it re-renderable,
at the price of flattening its format in Python on both sides and a Python hook for every
value: with two workers, relaying the one line per message cost about a tenth of the gateway's
CPU.  It also lost a failure's message (``ValueError: {'unpersistable': True}``).  So an event
travels rendered: its message as the worker's own log would show it (L{rendered_message}, else
Twisted's formatter), its time, level, namespace and JSON fields (L{own_fields}), and a
failure's type, message and traceback as text, encoded and decoded by the json module's C
code.  The main process writes the line the worker would have written, with the same
per-message fields.
"""

from __future__ import annotations

import json
from typing import IO, Any, Optional

import attrs
from twisted.logger import FileLogObserver, LogLevel, formatEvent

from gateway.logging import MESSAGE_FIELDS, SHOWN_FIELDS, as_format, own_fields, rendered_message

#: Starts each record, as in JSON text sequences (RFC 7464).
RECORD_SEPARATOR = "\x1e"

_LEVELS = {level.name: level for level in LogLevel.iterconstants()}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@attrs.frozen
class RelayedFailure:
    """A worker's failure as the main process's log observers read one (its traceback is text now)."""

    type_name: str
    message: str
    traceback: str

    @property
    def type(self) -> type:
        return type(self.type_name, (Exception,), {})

    def getTraceback(self) -> str:  # noqa: N802 - what log observers call on a Failure
        return self.traceback

    def getErrorMessage(self) -> str:  # noqa: N802
        return self.message


def relay_record(event: dict) -> str:
    """One worker event as one line for the log pipe."""
    text = rendered_message(event)
    fmt = event.get("log_format")
    level = event.get("log_level")
    system = event.get("log_system")
    record: dict[str, Any] = {
        "text": text if text is not None else formatEvent(event),
        "time": event.get("log_time"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace"),
        "system": system if isinstance(system, str) else None,
        "shown": [name for name in MESSAGE_FIELDS if "{" + name in fmt] if isinstance(fmt, str) else [],
        "fields": _fields(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = {"type": getattr(failure.type, "__name__", "Error"),
                             "message": failure.getErrorMessage(), "traceback": failure.getTraceback()}
    return RECORD_SEPARATOR + _ENCODER.encode(record) + "\n"


def _fields(event: dict) -> dict:
    """The JSON fields, plus per-message fields without a JSON form as the text shows them (``str``)."""
    fields = own_fields(event)
    for name in MESSAGE_FIELDS:
        if name not in fields and event.get(name) is not None:
            fields[name] = str(event[name])
    return fields


def relay_observer(stream: IO[str]) -> FileLogObserver:
    """The worker's log observer: every event it emits, into the pipe to the main process."""
    return FileLogObserver(stream, relay_record)


def relayed_event(record: bytes, pid: Optional[int], index: int) -> Optional[dict]:
    """
    The event to emit in the main process for one record from worker ``index`` (process
    ``pid``), or None when the record is garbled.
    """
    try:
        data = json.loads(record.decode("utf-8").lstrip(RECORD_SEPARATOR))
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
        return None
    event: dict[str, Any] = dict(data["fields"])
    event.update(
        log_time=data.get("time"),
        log_level=_LEVELS.get(data.get("level"), LogLevel.info),
        log_namespace=data.get("namespace") or "-",
        log_format="[worker {worker_pid}] " + as_format(str(data.get("text", ""))),
        worker_pid=pid,
        worker=index,
    )
    event[SHOWN_FIELDS] = tuple(data.get("shown") or ())
    if data.get("system"):
        event["log_system"] = data["system"]
    failure = data.get("failure")
    if isinstance(failure, dict):
        event["log_failure"] = RelayedFailure(str(failure.get("type")), str(failure.get("message")),
                                              str(failure.get("traceback")))
    return event


__all__ = ["relay_record", "relay_observer", "relayed_event", "RelayedFailure", "RECORD_SEPARATOR"]
