"""
Delivery observers: plugins told about every outcome (audit logs, notifications, webhooks).

Observers are ``IDeliveryObserverFactory`` plugins in ``twisted/plugins``, discovered like
policies (L{gateway.plugins}: the same discovery, options and lazy plugin object) and enabled
by name in ``[[observer]]`` entries.  Each built observer is wrapped in a
L{GuardedObserver}, so an exception or a failed Deferred is logged and never reaches the queue
runner: an audit log with a full disk must not stop mail.

The built-in ``json-log`` appends one JSON object per line per outcome.  A line is written with
a single ``write(2)`` on an ``O_APPEND`` descriptor: small enough not to stall the reactor,
atomic with respect to other writers of the same file, and compatible with logrotate's
``copytruncate``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from types import ModuleType
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import attrs
from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gateway.config.errors import ConfigError
from gateway.config.policy import ObserverRef
from gateway.delivery.interfaces import (
    Delivered,
    IDeliveryObserver,
    Outcome,
    Permanent,
    Transient,
)
from gateway.plugins.discovery import Discovery, describe, discover
from gateway.plugins.errors import PolicyConfigError
from gateway.plugins.options import PluginOptions
from gateway.spool.entry import SpoolEntry


class IDeliveryObserverFactory(Interface):
    """
    A plugin that builds a delivery observer from its ``[[observer]]`` options.  Provided
    (together with ``twisted.plugin.IPlugin``) by module-level instances in
    ``twisted/plugins/*.py``.
    """

    name = Attribute("The name used in configuration: ``use = \"<name>\"`` (str).")
    description = Attribute("One line describing the observer (str).")

    def build(options: Mapping[str, Any], context: "ObserverContext") -> IDeliveryObserver:
        """
        Return an observer for these options (the entry without ``use``).  Raise
        L{gateway.plugins.errors.PolicyConfigError} naming the option for anything invalid.
        An observer may have ``open()`` / ``close()``, called when the gateway starts and stops.
        """


@attrs.frozen
class ObserverContext:
    """
    Shared services for observer factories: ``clock`` (IReactorTime), ``resolve`` (turns a
    relative path from the configuration into an absolute one, relative to the configuration
    file), ``hostname`` and ``key`` (the configuration key of the entry, for messages).
    """

    clock: IReactorTime
    resolve: Callable[[str], str] = os.path.abspath
    hostname: str = "localhost"
    key: str = "observer"


@implementer(IDeliveryObserver)
@attrs.define
class GuardedObserver:
    """Calls ``observer``; logs and swallows its exceptions and failed Deferreds."""

    observer: IDeliveryObserver
    name: str = "observer"
    log = Logger()

    def _call(self, method: str, call: Callable[[SpoolEntry, Any], object], entry: SpoolEntry, outcome: Outcome) -> None:
        def failed(failure: Failure) -> None:
            self.log.failure(
                "delivery observer {name} failed on {method} of {queueId}", failure,
                name=self.name, method=method, queueId=entry.queue_id,
            )

        maybeDeferred(call, entry, outcome).addErrback(failed)

    def delivered(self, entry: SpoolEntry, outcome: Delivered) -> None:
        self._call("delivered", self.observer.delivered, entry, outcome)

    def deferred(self, entry: SpoolEntry, outcome: Transient) -> None:
        self._call("deferred", self.observer.deferred, entry, outcome)

    def failed(self, entry: SpoolEntry, outcome: Permanent) -> None:
        self._call("failed", self.observer.failed, entry, outcome)

    def open(self) -> None:
        if hasattr(self.observer, "open"):
            self.observer.open()

    def close(self) -> None:
        if hasattr(self.observer, "close"):
            self.observer.close()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@implementer(IDeliveryObserver)
class JsonDeliveryLog:
    """
    ``JsonDeliveryLog(path, clock, recipients="count")``: one JSON line per outcome with
    ``time, queue_id, outcome, sender, recipients (count or list), reason, attempts`` and,
    when known, ``status``, ``remote_code``, ``retry_at``, ``possibly_delivered``, ``size``,
    ``listener``, ``auth_identity``.  The file is created mode 0640: it names people.
    """

    log = Logger()

    def __init__(self, path: str, clock: IReactorTime, recipients: str = "count") -> None:
        self.path = path
        self._clock = clock
        self._recipients = recipients
        self._fd: Optional[int] = None

    def open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def record(self, outcome_name: str, entry: SpoolEntry, outcome: Outcome) -> dict[str, Union[str, int, bool, list[str]]]:
        envelope = entry.envelope
        provenance = entry.provenance
        record: dict[str, Union[str, int, bool, list[str]]] = {
            "time": _iso(self._clock.seconds()),
            "queue_id": entry.queue_id,
            "outcome": outcome_name,
            "sender": envelope.sender,
            "recipients": list(envelope.recipients) if self._recipients == "list" else len(envelope.recipients),
            "reason": (outcome.detail if isinstance(outcome, Delivered) else outcome.reason) or "",
            "attempts": entry.attempts,
            "size": entry.size,
        }
        record["listener"] = provenance.listener
        if provenance.auth_identity:
            record["auth_identity"] = provenance.auth_identity
        if isinstance(outcome, Permanent):
            record["status"] = outcome.status
            if outcome.remote_code:
                record["remote_code"] = outcome.remote_code
        if isinstance(outcome, Transient):
            if outcome.retry_at is not None:
                record["retry_at"] = _iso(outcome.retry_at)
            if outcome.possibly_delivered:
                record["possibly_delivered"] = True
        return record

    def _write(self, outcome_name: str, entry: SpoolEntry, outcome: Outcome) -> None:
        line = json.dumps(self.record(outcome_name, entry, outcome), ensure_ascii=False, separators=(",", ":"))
        self.open()
        assert self._fd is not None
        os.write(self._fd, (line + "\n").encode("utf-8"))

    def delivered(self, entry: SpoolEntry, outcome: Delivered) -> None:
        self._write("delivered", entry, outcome)

    def deferred(self, entry: SpoolEntry, outcome: Transient) -> None:
        self._write("deferred", entry, outcome)

    def failed(self, entry: SpoolEntry, outcome: Permanent) -> None:
        self._write("failed", entry, outcome)


def build_json_log(options: Mapping[str, Any], context: ObserverContext) -> JsonDeliveryLog:
    o = PluginOptions(options)
    path = o.string("path")
    if not path:
        raise PolicyConfigError("is required: the file to append JSON lines to", "path")
    recipients = o.string("recipients", "count", ("count", "list"))
    o.finish()
    path = context.resolve(path)
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise PolicyConfigError(f"directory {directory} does not exist", "path")
    assert recipients is not None
    return JsonDeliveryLog(path, context.clock, recipients)


def _resolver(base: str) -> Callable[[str], str]:
    """Turns a path from an ``[[observer]]`` entry into an absolute one, relative to ``base``."""
    def resolve(path: str) -> str:
        return os.path.normpath(os.path.join(base, os.path.expanduser(path)))
    return resolve


def discover_observers(package: Optional[ModuleType] = None) -> Discovery:
    return discover(IDeliveryObserverFactory, "observer", package)


def build_observers(
    refs: Sequence[ObserverRef],
    clock: IReactorTime,
    hostname: str = "localhost",
    discovery: Optional[Discovery] = None,
) -> list[GuardedObserver]:
    """
    Observers for the ``[[observer]]`` entries (``config.observers``), each
    guarded.  Errors are L{gateway.config.ConfigError}s naming the entry and option.
    """
    if not refs:
        return []
    if discovery is None:
        discovery = discover_observers()
    observers = []
    for ref in refs:
        factory = discovery.resolve(ref.use, f"{ref.key}.use")
        context = ObserverContext(clock=clock, hostname=hostname, key=ref.key, resolve=_resolver(ref.base_dir))
        try:
            observer = factory.build(dict(ref.options), context)
        except PolicyConfigError as e:
            where = f"{ref.key}.{e.option}" if e.option else ref.key
            raise ConfigError(where, f"observer {ref.use!r}: {e}") from None
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(ref.key, f"observer {ref.use!r} ({describe(factory)}) failed to build: {type(e).__name__}: {e}") from None
        if not IDeliveryObserver.providedBy(observer):
            raise ConfigError(ref.key, f"observer {ref.use!r}: {describe(factory)}.build returned {type(observer).__name__}, which does not provide IDeliveryObserver")
        observers.append(GuardedObserver(observer, ref.use))
    return observers


class ObserversService(Service):
    """
    Opens the observers' files when the gateway starts (so a bad path shows at start-up) and
    closes them when it stops.  Start it before the queue runner, stop it after.
    """

    log = Logger()

    def __init__(self, observers: Sequence[IDeliveryObserver]) -> None:
        self.observers = list(observers)

    def startService(self) -> None:
        super().startService()
        for observer in self.observers:
            if hasattr(observer, "open"):
                observer.open()

    def stopService(self) -> None:
        super().stopService()
        for observer in self.observers:
            try:
                if hasattr(observer, "close"):
                    observer.close()
            except Exception:
                self.log.failure("closing delivery observer {name} failed", name=getattr(observer, "name", observer))


__all__ = [
    "IDeliveryObserverFactory", "ObserverContext", "GuardedObserver",
    "JsonDeliveryLog", "build_json_log", "discover_observers", "build_observers", "ObserversService",
]
