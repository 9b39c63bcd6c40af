"""
Log output for operators: readable text by default, one JSON object per line for log shippers,
debug lines only when asked for.

- ``twistd -n graphsmtp``: text, as twistd writes it (stdout, ``--logfile`` or ``--syslog``).  A
  per-message line also shows the message's fields the way Postfix does:
  ``… from=<a@corp.example>, to=<b@corp.example>, size=1234, relay=graph, mailbox=a@corp.example,
  delay=0.8, attempt=1, status=sent``.
- ``twistd --logger=gateway.logging.json_observer -n graphsmtp``: NDJSON on stdout, one object
  per event: ``time`` (ISO 8601 UTC), ``level``, ``system``, ``namespace``, ``text`` (the rendered
  message) and the event's own fields (``queue_id``, ``from``, ``to``, ``size``, ``mailbox``,
  ``status``, ``attempt``, ``delay``, ``reason``, …) — only JSON values, never fields whose name
  says they hold a credential, and none of Twisted's ``log_*`` bookkeeping.  Fit for journald
  and Loki.
- Level: ``GRAPHSMTP_LOG_LEVEL`` = ``debug`` | ``info`` (default) | ``warn`` | ``error`` |
  ``critical``, for both forms and also under ``twistd -n`` (``twist`` has its own
  ``--log-level``).  Per-message debug lines are off unless asked for.

Twisted's legacy SMTP chatter ("Receiving message for delivery: from=…") cannot appear either
way: the gateway's protocol runs with ``noisy = False``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from typing import IO, Any, Callable, Mapping, Optional

from twisted.application.service import IService, IServiceCollection, MultiService
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.components import Componentized
from zope.interface import implementer

LEVEL_ENV = "GRAPHSMTP_LOG_LEVEL"

#: The fields of a per-message line, in the order Postfix would print them.
MESSAGE_FIELDS = ("from", "to", "size", "relay", "mailbox", "delay", "attempt", "status", "reason")

#: Field names that may hold credential material: never written, whatever the event carries.
_SECRET_WORDS = ("secret", "password", "passwd", "token", "authorization", "private", "passphrase",
                 "credential", "cookie", "assertion", "bearer")
#: The same words as one search (a worker relays every event's fields: one C call per key).
_SECRET_NAME = re.compile("|".join(_SECRET_WORDS), re.IGNORECASE)
#: Values that are their own JSON form (``float`` is not: NaN).
_PLAIN = frozenset((str, int, bool, type(None)))
_JSON_SCALARS = (str, int, float, bool, type(None))
#: Keys of twisted.python.log's legacy events: bookkeeping, not fields.
_LEGACY_KEYS = frozenset(("format", "message", "isError", "why", "failure"))
#: Per-message fields an event's text already shows although its format no longer names them
#: (a worker's event arrives rendered, L{gateway.workers.log_relay}).
SHOWN_FIELDS = "log_shown_fields"
_COLLECTIONS = (list, tuple, set, frozenset)


def log_level(environ: Optional[Mapping[str, str]] = None) -> LogLevel:
    """The level from ``GRAPHSMTP_LOG_LEVEL`` (default info; an unknown name also means info)."""
    name = (environ if environ is not None else os.environ).get(LEVEL_ENV, "").strip().lower()
    name = {"warning": "warn", "err": "error", "crit": "critical"}.get(name, name)
    try:
        return LogLevel.levelWithName(name) if name else LogLevel.info
    except Exception:  # noqa: BLE001 - InvalidLogLevelError
        return LogLevel.info


def level_filter(observer: ILogObserver, level: LogLevel) -> ILogObserver:
    """``observer`` seeing only events at ``level`` or above."""
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])


# -- JSON -------------------------------------------------------------------------------------

def event_as_json(event: Mapping[str, Any], iso: Optional[Callable[[float], str]] = None) -> dict:
    """The JSON object for one event (see the module docstring); ``iso`` writes its time."""
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": (iso or _iso)(when) if isinstance(when, (int, float)) else None,
        "level": getattr(level, "name", None) or "info",
        "system": event.get("log_system") or event.get("log_namespace") or "-",
        "namespace": event.get("log_namespace") or "-",
        "text": _render(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = f"{getattr(failure.type, '__name__', 'Error')}: {_safe_text(failure.getErrorMessage())}"
        record["traceback"] = failure.getTraceback()
    for key, value in own_fields(event).items():
        record.setdefault(key, value)
    return record


def own_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """
    The event's own fields as JSON values: none of Twisted's ``log_*`` bookkeeping or legacy
    keys, never a field whose name says it holds a credential, and no value without a faithful
    JSON form.
    """
    fields: dict[str, Any] = {}
    secret = _SECRET_NAME.search
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or secret(key):
            continue
        if type(value) in _PLAIN:
            fields[key] = value
            continue
        value = _jsonable(value)
        if value is not _SKIP:
            fields[key] = value
    return fields


def json_line(event: Mapping[str, Any]) -> str:
    return _JSON.encode(event_as_json(event)) + "\n"


class JsonLines:
    """
    L{json_line} for one observer, with the time's text up to the second made once per
    second (L{PerSecond}): the JSON observer writes every event the gateway logs, one per
    accepted message at least.
    """

    def __init__(self) -> None:
        self._iso = PerSecond(_iso, _iso_second, _iso_tail)

    def __call__(self, event: Mapping[str, Any]) -> str:
        return _JSON.encode(event_as_json(event, self._iso)) + "\n"


def json_observer(out: Optional[IO[str]] = None, environ: Optional[Mapping[str, str]] = None) -> ILogObserver:
    """
    NDJSON on stdout (or ``out``), filtered by ``GRAPHSMTP_LOG_LEVEL``; the zero-argument form
    is what ``twistd --logger`` calls.
    """
    return level_filter(FileLogObserver(out if out is not None else sys.stdout, JsonLines()), log_level(environ))


# -- text -------------------------------------------------------------------------------------

def message_fields_text(event: Mapping[str, Any]) -> str:
    """
    ``from=<…>, to=<…>, size=…, relay=graph, mailbox=…, delay=…, attempt=…, status=…`` for an
    event about one message (it carries ``queue_id`` and ``status``), leaving out what its own
    text already shows; ``""`` for any other event.
    """
    if "queue_id" not in event or "status" not in event:
        return ""
    shown = str(event.get("log_format") or "")
    also_shown = event.get(SHOWN_FIELDS) or ()
    parts = []
    for name in MESSAGE_FIELDS:
        if "{" + name in shown or name in also_shown:
            continue
        value = _message_field(event, name)
        # An empty sender is the null reverse-path and worth showing (``from=<>``); other
        # empty fields just were not known.
        if value is None or (value == "" and name != "from"):
            continue
        parts.append(_FIELD_TEXT.get(name, _plain_field_text)(name, value))
    return ", ".join(parts)


def with_message_fields(observer: ILogObserver) -> ILogObserver:
    """
    ``observer`` getting per-message events with their Postfix-style fields appended to the
    text, and every event's message already rendered: its ``log_format`` replaced by the text
    it gives (braces escaped), so the text observer's own formatting only copies it.  Rendered
    by C{str.format_map} (C code) instead of Twisted's Python formatter, once per event; events
    that only Twisted renders right (``{call()}`` fields, flattened events, bytes formats, any
    format that does not render) go on unchanged.  The observer sees the same text either way.
    """

    @implementer(ILogObserver)
    def render(event: dict) -> None:
        extra = message_fields_text(event)
        text = rendered_message(event)
        if text is not None or extra:
            shown = as_format(text) if text is not None else (event.get("log_format") or "")
            event = dict(event)
            event["log_format"] = shown + ": " + as_format(extra) if extra else shown
        observer(event)

    return render


def rendered_message(event: Mapping[str, Any]) -> Optional[str]:
    """
    The event's message as Twisted's ``formatEvent`` renders it, or None when this cannot
    promise the same text.  Without ``()`` in the format, Twisted's formatter (C{string.Formatter}
    over the event, values wrapped only to allow calls) and C{str.format_map} agree, except on
    an attribute the wrapper has itself (``{e.__class__.__name__}`` is ``PotentialCallWrapper``
    there, ``{e._wrapped}`` the value): all of those start with ``_``, so ``._`` goes to Twisted.
    """
    fmt = event.get("log_format")
    if type(fmt) is not str or "()" in fmt or "._" in fmt or "log_flattened" in event:
        return None
    try:
        return fmt.format_map(event)
    except Exception:  # noqa: BLE001 - Twisted's formatter writes its "unable to format" text
        return None


def as_format(text: str) -> str:
    """``text`` as a format string that renders to itself."""
    return text.replace("{", "{{").replace("}", "}}") if "{" in text or "}" in text else text


def text_observer_for(base: Any, environ: Optional[Mapping[str, str]] = None) -> ILogObserver:
    """twistd's own observer ``base`` (text file, stdout or syslog) with fields and level filter."""
    if not ILogObserver.providedBy(base):
        base = LegacyLogObserverWrapper(base)
    return level_filter(with_message_fields(base), log_level(environ))


class PerSecond:
    """
    A time's text whose part up to the second is made once per second: the same text as
    ``exact(when)``, which builds two C{datetime}s and looks up the timezone (most of a log
    line's cost), for every event of a busy second.

    ``second(s)`` writes the whole second ``s``; ``tail(microseconds)`` what follows it, if
    anything.  A time before 1970 (``int()`` would take -0.5 to 1970), not a number or
    infinite, or whose microseconds round up into the next second, is written by ``exact``,
    as C{datetime} would round it (or with the error it raises).
    """

    def __init__(self, exact: Callable[[float], str], second: Callable[[int], str],
                 tail: Optional[Callable[[int], str]] = None) -> None:
        self._exact = exact
        self._second_text = second
        self._tail = tail
        self._second: Optional[int] = None
        self._text = ""

    def __call__(self, when: float) -> str:
        if not 0 <= when < _INFINITY:  # also NaN
            return self._exact(when)
        second = int(when)
        # datetime rounds to the microsecond, half to even: the same rounding as round().
        micro = round((when - second) * 1_000_000)
        if micro >= 1_000_000:
            return self._exact(when)
        if second != self._second:
            self._text = self._second_text(second)
            self._second = second
        return self._text + self._tail(micro) if self._tail is not None else self._text


class ClassicLines:
    """
    Twisted's classic text line (C{formatEventAsClassicLogText} with twistd's RFC 3339 time:
    ``<time> [<system>] <text>``) for an event whose message renders in C (L{rendered_message},
    which every event L{with_message_fields} passed on does), without Twisted's Python
    formatter and with the time made once per second (L{PerSecond}).  Anything else (a
    failure to write, a format that needs Twisted's formatter) goes to Twisted's function.
    """

    def __init__(self) -> None:
        self._time = PerSecond(_local_time, _local_time)

    def __call__(self, event: dict[str, Any]) -> Optional[str]:
        text = rendered_message(event) if "log_failure" not in event else None
        if text is None:
            return formatEventAsClassicLogText(event, _local_time)
        if not text:
            return None
        when = event.get("log_time")
        stamp = self._time(when) if type(when) is float or type(when) is int else _local_time(when)
        line = f"{stamp} [{_system(event)}] {text}"
        return (line.replace("\n", "\n\t") if "\n" in line else line) + "\n"


def twistd_default_observer(server_options: Mapping[str, Any]) -> Any:
    """
    The observer twistd would pick for these options (``--logfile``, ``--syslog``, ``-n``).
    Its text file observer (``--logfile``, or stdout under ``-n``: Twisted's classic lines with
    the default time format) gets L{ClassicLines} as its formatter: the same lines, made for a
    fraction of the cost.  Set here, where the observer is known to be that one.
    """
    from twisted.scripts.twistd import _SomeApplicationRunner

    observer = _SomeApplicationRunner.loggerFactory(server_options)._getLogObserver()
    if isinstance(observer, FileLogObserver):
        observer.formatEvent = ClassicLines()
    return observer


class LoggingRoot(MultiService):
    """
    The service twistd gets from the graphsmtp plugin: the gateway, plus the default log
    observer.  twistd asks the application for an ``ILogObserver`` component when no
    ``--logger`` was given; this installs twistd's usual observer wrapped with the level filter
    and the per-message fields, so debug lines stay off under ``twistd -n`` too.
    """

    def __init__(self, service: IService, make_observer: Callable[[], ILogObserver]) -> None:
        super().__init__()
        self.gateway = service
        self._make_observer = make_observer
        service.setServiceParent(self)

    def setServiceParent(self, parent: IServiceCollection) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, self._make_observer())
        return super().setServiceParent(parent)


# -- helpers ----------------------------------------------------------------------------------

class _Skip:
    pass


_SKIP = _Skip()


def _message_field(event: Mapping[str, Any], name: str) -> Any:
    """The event's value for one of MESSAGE_FIELDS; ``relay`` defaults to graph once a mailbox is known."""
    if name == "relay":
        return event.get("relay") or ("graph" if event.get("mailbox") else None)
    return event.get(name)


def _addresses_text(name: str, value: Any) -> str:
    addresses = value if isinstance(value, _COLLECTIONS) else [value]
    return f"{name}=" + ",".join(f"<{a}>" for a in addresses)


def _delay_text(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"delay={value:.2f}".rstrip("0").rstrip(".")
    return f"delay={value}"


def _reason_text(name: str, value: Any) -> str:
    # Postfix puts the reason last, in parentheses; it may quote a remote reply, so keep it on one line.
    return f"({_safe_text(str(value))})"


def _plain_field_text(name: str, value: Any) -> str:
    return f"{name}={value}"


#: How a per-message field is written when it is not written as ``name=value``.
_FIELD_TEXT: Mapping[str, Callable[[str, Any], str]] = {
    "from": _addresses_text, "to": _addresses_text, "delay": _delay_text, "reason": _reason_text,
}

#: Containers are written two levels deep at most: deeper values are dropped, not flattened.
_MAX_JSON_DEPTH = 2


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as a JSON value, or ``_SKIP`` when it has no faithful one (objects, deep nesting)."""
    if isinstance(value, _JSON_SCALARS):
        return _json_scalar(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if depth >= _MAX_JSON_DEPTH:
        return _SKIP
    if isinstance(value, _COLLECTIONS):
        return _json_list(value, depth + 1)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return _json_object(value, depth + 1)
    return _SKIP


def _json_scalar(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _json_list(values: Any, depth: int) -> list[Any]:
    converted = (_jsonable(v, depth) for v in values)
    return [v for v in converted if v is not _SKIP]


def _json_object(mapping: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """The mapping's JSON values, leaving out keys named like credentials (as at the top level)."""
    converted = ((k, _jsonable(v, depth)) for k, v in mapping.items() if not _secret_name(k))
    return {k: v for k, v in converted if v is not _SKIP}


def _secret_name(key: str) -> bool:
    return _SECRET_NAME.search(key) is not None


def _render(event: Mapping[str, Any]) -> str:
    text = rendered_message(event)
    if text:
        return _safe_text(text)
    try:
        text = formatEvent(dict(event))
    except Exception:  # noqa: BLE001 - a broken format must not lose the line
        text = str(event.get("log_format") or "")
    if not text and "message" in event:  # legacy twisted.python.log events
        text = " ".join(str(m) for m in event.get("message") or ())
    return _safe_text(text)


def _safe_text(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n") if "\n" in text or "\r" in text else text


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime(_ISO_TO_SECOND) + _iso_tail(moment.microsecond)


def _iso_second(second: int) -> str:
    return datetime.datetime.fromtimestamp(second, datetime.timezone.utc).strftime(_ISO_TO_SECOND)


def _iso_tail(microseconds: int) -> str:
    return f"{microseconds // 1000:03d}Z"


#: The JSON line's time up to the second; L{_iso_tail} writes the milliseconds and the zone.
_ISO_TO_SECOND = "%Y-%m-%dT%H:%M:%S."


def _local_time(seconds: Optional[float]) -> str:
    return formatTime(seconds, timeFormatRFC3339)


def _system(event: Mapping[str, Any]) -> str:
    """The ``[system]`` of Twisted's classic line (its C{_formatSystem})."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        return f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    try:
        return str(system)
    except Exception:  # noqa: BLE001 - what Twisted writes for a system that will not print
        return "UNFORMATTABLE"


_INFINITY = float("inf")

#: One encoder for every line (``json.dumps`` with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


__all__ = [
    "json_observer", "event_as_json", "json_line", "log_level", "level_filter", "message_fields_text",
    "with_message_fields", "text_observer_for", "twistd_default_observer", "LoggingRoot", "LEVEL_ENV",
    "own_fields", "rendered_message", "as_format", "MESSAGE_FIELDS", "SHOWN_FIELDS", "ClassicLines", "JsonLines",
    "PerSecond",
]
