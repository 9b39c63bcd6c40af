"""
The main process's side of ``[gateway] workers = N``: bind, pause, spawn, watch, restart.

L{WorkerSupervisor} wraps the gateway's own service.  The gateway binds every listener as
always (before twistd drops privileges); the supervisor then stops the main process accepting
on the TCP listeners (L{gateway.workers.sockets.paused_descriptors}) — the ``[local]`` socket
and the status endpoint stay with the main process — and, once the queue runner has recovered
the spool (recovery clears tmp/, which must not race a worker's writes), spawns N workers.

Each worker gets (L{gateway.workers.channel}): the listening sockets, the spool lock's
descriptor, a pipe for commit notices (each one becomes ``DirectorySpool.announce``, so the
runner schedules the message at once), a pipe for its log events (re-emitted here, text
prefixed with ``[worker <pid>]``) and descriptor 0, whose end of file tells it the main
process is gone.  Intake reports arrive on the notice pipe too: the workers' counts and sessions,
for ``/metrics`` and the status page (L{gateway.workers.reports}).

A worker that exits while the gateway runs is restarted after a back-off (0.5 s doubling to
30 s; reset once a worker has run for a minute), with one log line each.  Anything it
committed whose notice never arrived (it died between the rename and the notice) is found by
listing queue/ for ids minted since it started and announced; its half-written temp files are
removed.  SIGHUP is passed on to every worker after the main process's own reload; stopping
(SIGTERM) sends SIGTERM to the workers, waits for them (they finish transactions in DATA within
``queue.shutdown_grace``), and only then stops the main process's queue runner and pools.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.spool.inflight import watch_descriptor
from gateway.workers.channel import (
    FIRST_LISTENER_FD,
    LOCK_FD,
    LOG_FD,
    NOTIFY_FD,
    LineSplitter,
    queue_id_of,
)
from gateway.workers.log_relay import relayed_event
from gateway.workers.reports import apply_report, is_report
from gateway.workers.sockets import paused_descriptors
from gateway.workers.spool_sweep import TempCleanup, remove_temp_files, unannounced_since

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
#: A worker that ran this long before exiting is restarted after FIRST_DELAY again.
STABLE_AFTER = 60.0
#: Beyond the grace the workers have to finish transactions, how long to wait before SIGKILL.
KILL_AFTER = 10.0
#: systemd's socket-activation variables: they describe the main process's descriptors.
SOCKET_ACTIVATION = frozenset({"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"})
#: Commit notices remembered per worker (only consulted to sweep after it dies).
REMEMBERED = 100_000


class WorkerProcess(ProcessProtocol):
    """One running worker, from the main process's side."""

    def __init__(self, supervisor: "WorkerSupervisor", index: int, tag: str) -> None:
        self.supervisor = supervisor
        self.index = index
        self.tag = tag
        self.pid: Optional[int] = None
        self.started_at = supervisor.reactor.seconds()
        #: Queue ids minted before this time are not swept when the worker dies.
        self.sweep_from = self.started_at
        self.announced: set[str] = set()
        #: A descriptor of the spool's filesystem opened before the worker started: the sweep
        #: after its death flushes through it (L{gateway.workers.spool_sweep.remove_temp_files}).
        self.watch: Optional[int] = None
        self.ended: Deferred = Deferred()
        self._log = LineSplitter(self._event)
        self._notices = LineSplitter(self._notice)
        self._text = {1: LineSplitter(self._said), 2: LineSplitter(self._said)}

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == NOTIFY_FD:
            self._notices.feed(data)
        elif childFD == LOG_FD:
            self._log.feed(data)
        elif childFD in self._text:
            self._text[childFD].feed(data)

    def _notice(self, line: bytes) -> None:
        if is_report(line):
            self.supervisor.intake_report(self, line)
            return
        queue_id = queue_id_of(line)
        if queue_id is None:
            return
        if len(self.announced) >= REMEMBERED:
            # Forget; a sweep after this worker's death re-announces the last hour (harmless).
            self.announced.clear()
            self.sweep_from = self.supervisor.reactor.seconds() - 3600.0
        self.announced.add(queue_id)
        self.supervisor.announce(queue_id)

    def _event(self, record: bytes) -> None:
        event = relayed_event(record, self.pid, self.index)
        if event is not None:
            self.supervisor.log.observer(event)

    def _said(self, line: bytes) -> None:
        self.supervisor.log.warn("[worker {worker_pid}] {line}", worker_pid=self.pid,
                                 line=line.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason: Failure) -> None:
        for splitter in (self._notices, self._log, *self._text.values()):
            splitter.flush()
        self.ended.callback(reason.value)
        self.supervisor.worker_ended(self, reason.value)


class WorkerSupervisor(MultiService):
    """The gateway service plus N intake workers (see the module docstring)."""

    log = Logger()

    def __init__(self, gateway: Any, count: int, config_path: Optional[str], overrides: dict,
                 reactor: Any = None, install_signal_handlers: bool = True) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.gateway = gateway
        self.count = count
        self.config_path = config_path
        self.overrides = overrides
        self.reactor = reactor
        self.install_signal_handlers = install_signal_handlers
        self.workers: dict[int, WorkerProcess] = {}
        self.descriptors: dict[str, int] = {}
        self._failures = dict.fromkeys(range(count), 0)
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._previous_sighup: Any = None
        self._paused = False
        gateway.setServiceParent(self)

    # -- start -----------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._pause_listeners()

    def startService(self) -> None:
        self._stopping = False
        super().startService()
        self._pause_listeners()  # ``twist`` binds in startService, not privilegedStartService
        if self.install_signal_handlers:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        self.gateway.components.runner.ready.addCallback(lambda _: self._spawn_all())

    def _pause_listeners(self) -> None:
        if self._paused:
            return
        names = {listener.name for listener in self.gateway.config.listeners}
        parts = [part for part in self.gateway.components.listeners if part.config.name in names]
        self.descriptors = paused_descriptors(parts)
        self._paused = len(self.descriptors) == len(parts)

    def _spawn_all(self) -> None:
        if self._stopping or not self.running:
            return
        self.log.info("starting {count} intake worker processes for listener(s) {names}",
                      count=self.count, names=", ".join(sorted(self.descriptors)))
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping or not self.running:
            return
        worker = WorkerProcess(self, index, os.urandom(6).hex())
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", LOG_FD: "r", NOTIFY_FD: "r",
                                     LOCK_FD: self._lock_fd()}
        args = [sys.executable, "-m", "gateway.workers.child", "--index", str(index), "--tag", worker.tag,
                "--overrides", json.dumps(self.overrides)]
        if self.config_path:
            args += ["--config", self.config_path]
        for n, (name, fd) in enumerate(sorted(self.descriptors.items())):
            child_fds[FIRST_LISTENER_FD + n] = fd
            args += ["--listener", f"{name}={FIRST_LISTENER_FD + n}"]
        env = {k: v for k, v in os.environ.items() if k not in SOCKET_ACTIVATION}  # the sockets come as fds
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        worker.watch = watch_descriptor(self.gateway.components.spool.disk.layout.tmp)
        try:
            self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs=child_fds)
        except BaseException:
            if worker.watch is not None:
                os.close(worker.watch)
            raise
        self.workers[index] = worker
        self.log.info("intake worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def _lock_fd(self) -> int:
        fd = self.gateway.components.spool.disk.lock_descriptor
        if fd is None:
            raise RuntimeError("the spool lock is not held; intake workers cannot share it")
        return int(fd)

    # -- running ---------------------------------------------------------------------------

    def announce(self, queue_id: str) -> None:
        """A worker committed ``queue_id``: the runner schedules it now."""
        d = self.gateway.components.spool.announce(queue_id)
        d.addErrback(lambda f: self.log.failure("reading {queue_id}, committed by a worker, failed "
                                                "(the periodic queue scan will find it)", f, queue_id=queue_id))

    def intake_report(self, worker: WorkerProcess, line: bytes) -> None:
        """A worker's counts and sessions (L{gateway.workers.reports}): into /metrics and the status page."""
        components = self.gateway.components
        apply_report(line, worker.index, components.metrics, components.worker_intake)

    def worker_ended(self, worker: WorkerProcess, reason: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self.gateway.components.worker_intake.forget(worker.index)
        self._after_death(worker)
        if self._stopping or not self.running:
            return
        lived = self.reactor.seconds() - worker.started_at
        if lived >= STABLE_AFTER:
            self._failures[worker.index] = 0
        self._failures[worker.index] += 1
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (self._failures[worker.index] - 1))
        self.log.error("intake worker {index} (pid {pid}) ended after {lived:.1f}s ({reason}); "
                       "restarting it in {delay:.1f}s", index=worker.index, pid=worker.pid, lived=lived,
                       reason=_why(reason), delay=delay)
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def _after_death(self, worker: WorkerProcess) -> None:
        """Announce what it committed without a notice; remove its temp files."""
        spool = self.gateway.components.spool
        layout = spool.disk.layout

        announced = set(worker.announced).union(*(w.announced for w in self.workers.values()))

        watch, worker.watch = worker.watch, None

        def sweep() -> tuple[list, TempCleanup]:
            try:
                # Listed first: the clean-up may wait for a flush of the whole filesystem.
                queue_ids = unannounced_since(layout.queue, worker.sweep_from - 1.0, announced)
                return queue_ids, remove_temp_files(layout.tmp, worker.tag, watch)
            finally:
                if watch is not None:
                    os.close(watch)

        def found(result: tuple[list, TempCleanup]) -> None:
            queue_ids, cleanup = result
            if cleanup.kept_markers:
                self.log.warn("after intake worker {index} ended: could not flush the spool's filesystem; the "
                              "markers and the intake journal of its commits stay in tmp/ ({markers}) for the next "
                              "start to check", index=worker.index, markers=", ".join(cleanup.kept_markers))
            if self._stopping or not queue_ids:
                return  # stopping: the next start's recovery schedules whatever is queued
            # Among these: what the dead worker committed without a notice; the rest (the
            # [local] socket's, sendmail imports) the runner knows and merely reschedules.
            self.log.info("after intake worker {index} ended: {count} queue entries minted since it started "
                          "and never announced by a worker are given to the queue runner",
                          index=worker.index, count=len(queue_ids))
            for queue_id in queue_ids:
                self.announce(queue_id)

        d = deferToThread(sweep).addCallback(found)
        d.addErrback(lambda f: self.log.failure("after worker {index} ended, listing the queue failed", f,
                                                index=worker.index))

    def _sighup(self, signum: int, frame: Any) -> None:
        if callable(self._previous_sighup):
            self._previous_sighup(signum, frame)
        self.reactor.callFromThread(self.signal_workers, signal.SIGHUP)

    def signal_workers(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            try:
                if worker.transport is not None:
                    worker.transport.signalProcess(signum)
            except Exception:  # it has just exited: its restart gets the new configuration
                pass
        if signum == signal.SIGHUP:
            self.log.info("SIGHUP passed on to {count} intake worker(s)", count=len(self.workers))

    # -- stop ------------------------------------------------------------------------------

    @inlineCallbacks
    def stopService(self) -> Any:
        self._stopping = True
        if self.install_signal_handlers and self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        running = list(self.workers.values())
        if running:
            self.log.info("stopping {count} intake worker(s)", count=len(running))
            self.signal_workers(signal.SIGTERM)
            grace = self.gateway.config.queue.shutdown_grace + KILL_AFTER
            kill = self.reactor.callLater(grace, self.signal_workers, signal.SIGKILL)
            yield DeferredList([w.ended for w in running])
            if kill.active():
                kill.cancel()
        yield super().stopService()


def _why(reason: Any) -> str:
    signal_number = getattr(reason, "signal", None)
    if signal_number:
        return f"killed by signal {signal_number}"
    return f"exit status {getattr(reason, 'exitCode', '?')}"


def with_workers(service: Any, config: Any, config_path: Optional[str], overrides: dict) -> Any:
    """``service`` itself with one process, else ``service`` under a L{WorkerSupervisor}."""
    workers = config.workers
    if not workers.enabled:
        if workers.fallback:
            Logger(namespace="gateway.workers").warn(
                "workers = \"auto\": intake stays in one process because {reason}", reason=workers.fallback)
        return service
    return WorkerSupervisor(service, workers.count, config_path, dict(overrides))


__all__ = ["WorkerSupervisor", "WorkerProcess", "with_workers"]
