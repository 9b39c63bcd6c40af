"""
An intake worker process: ``python -m gateway.workers.child`` (spawned by L{gateway.workers.
supervisor}, never by hand).

It loads the same configuration file as the main process (with the same command-line
overrides), builds the same components with L{gateway.service.build_components}, and keeps
only intake: the spool writer (on the main process's lock, L{SpoolDisk.share_lock}), the
thread pools, AUTH, Redis, the policy chains and one SMTP factory per listener, each
listening on the socket the main process bound.  The queue runner, the incoming watcher, the
observers, the status endpoint and the ``[local]`` socket stay in the main process.

It runs L{gateway.service.GatewayService} over those components, so start, SIGHUP (reload for
new sessions, certificates) and stop (stop accepting, finish transactions in DATA within
``queue.shutdown_grace``, 421 to the rest, wait (bounded) until those replies are written out)
are the single-process gateway's.  It stops the same
way when the main process goes away (its end of descriptor 0 closes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

import attrs
from twisted.internet.defer import maybeDeferred
from twisted.logger import FileLogObserver, Logger, globalLogBeginner

from gateway.workers.channel import CONTROL_FD, LOCK_FD, LOG_FD, CommitNotifier, EndOfFileWatch
from gateway.workers.reports import IntakeReporter, ReportingMetrics

#: Components of the full gateway that belong to the main process only (matched by class name,
#: so a module moving between packages does not silently put a second queue runner here).
MAIN_ONLY_SERVICES = frozenset({"QueueRunner", "IncomingWatcher", "ObserversService"})

log = Logger(namespace="gateway.workers.child")


@attrs.frozen
class WorkerArguments:
    config: Optional[str]
    overrides: dict
    index: int
    tag: str
    listeners: dict  # listener name -> descriptor


def parse_arguments(argv: Sequence[str]) -> WorkerArguments:
    parser = argparse.ArgumentParser(prog="graphsmtp-worker")
    parser.add_argument("--config", default=None)
    parser.add_argument("--overrides", default="{}")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--listener", action="append", default=[], help="NAME=FD")
    args = parser.parse_args(list(argv))
    listeners = {}
    for item in args.listener:
        name, _, fd = item.rpartition("=")
        listeners[name] = int(fd)
    return WorkerArguments(args.config or None, json.loads(args.overrides), args.index, args.tag, listeners)


def worker_view(config: Any) -> Any:
    """The configuration as a worker uses it: no status endpoint and no ``[local]`` socket."""
    return attrs.evolve(config, status=attrs.evolve(config.status, endpoint=None),
                        local=attrs.evolve(config.local, socket=None))


class _NoDeliverer:
    """Stands in for the deliverer a worker never builds (delivery is the main process's job)."""

    def deliver(self, entry: Any) -> Any:  # pragma: no cover - the runner never runs here
        raise RuntimeError("intake workers do not deliver")


def _main_gone(reactor: Any) -> None:
    """Descriptor 0 reached end of file: the main process exited (or was killed)."""
    if reactor.running:
        log.warn("the main process is gone; this worker stops")
        reactor.stop()


@attrs.frozen
class Worker:
    """A worker's gateway service and the reporter of its intake counts, both not started."""

    service: Any
    reporter: IntakeReporter


def build_worker(args: WorkerArguments, reactor: Any) -> Worker:
    """The worker's parts, not started; raises ConfigError on a bad configuration."""
    from gateway.config import ConfigError, load_config
    from gateway.service import GatewayService, build_components
    from gateway.workers.sockets import adopted_service

    def load() -> Any:
        return worker_view(load_config(args.config, args.overrides, os.environ))

    config = load()
    # listen=False: no endpoint is set up here (a systemd: one would look for sockets systemd
    # passed to the main process); each listener gets its adopted socket below.
    metrics = ReportingMetrics()
    components = build_components(config, reactor, deliverer=_NoDeliverer(), listen=False, metrics=metrics)
    components.services = [s for s in components.services
                            if type(s).__name__ not in MAIN_ONLY_SERVICES and s is not components.runner]
    spool = components.spool
    spool.disk.tag = args.tag
    spool.disk.share_lock(LOCK_FD)
    notifier = CommitNotifier(reactor)
    spool.on_commit(notifier.committed)
    for part in components.listeners:
        if part.config.name not in args.listeners:
            raise ConfigError(f"listener.{part.config.name}", "was added after graphsmtp started: "
                              "restart graphsmtp to listen on it")
        part.service = adopted_service(reactor, part.config, part.factory, args.listeners[part.config.name])
    service = GatewayService(config, components, reactor, config_loader=load, delivers=False)
    return Worker(service, IntakeReporter(reactor, metrics, components.listeners, notifier.send))


def _report_last(result: Any, reporter: IntakeReporter) -> Any:
    reporter.stop()
    return result


def _start_logging() -> None:
    from gateway.logging import level_filter, log_level
    from gateway.workers.log_relay import relay_observer

    stream = os.fdopen(LOG_FD, "w", buffering=1, encoding="utf-8")
    observer: FileLogObserver = relay_observer(stream)
    globalLogBeginner.beginLoggingTo([level_filter(observer, log_level(os.environ))],
                                     redirectStandardIO=False, discardBuffer=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    _start_logging()
    from twisted.internet import reactor

    from gateway.config import ConfigError

    try:
        worker = build_worker(args, reactor)
    except ConfigError as e:
        log.critical("worker {index}: configuration error: {error}", index=args.index, error=str(e))
        return 78
    EndOfFileWatch(reactor, CONTROL_FD, lambda: _main_gone(reactor))
    status = {"code": 0}
    service = worker.service

    def start() -> None:
        try:
            service.startService()
            worker.reporter.start()
        except SystemExit as e:
            log.critical("worker {index}: {error}", index=args.index, error=str(e))
            status["code"] = 1
            reactor.stop()

    def stop() -> Any:
        if not service.running:
            return None
        # GatewayService's stop ends once the closed sessions have written their last
        # replies out (bounded, gateway.smtp.closing), as in the single process; the last
        # report then carries what those last transactions counted.
        return maybeDeferred(service.stopService).addBoth(_report_last, worker.reporter)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
