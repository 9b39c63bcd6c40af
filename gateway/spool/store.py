"""
L{DirectorySpool}: the durable, Deferred-driven spool the daemon runs on.

Every operation is a thread job in the spool's own thread pool (never the reactor thread,
never the reactor's default pool that DNS shares); this module only schedules those jobs and
reports on the reactor thread.  The on-disk formats and the crash-safety protocols are
documented in the L{gateway.spool} package docstring (layout and protocols) and
L{gateway.spool.record} (the envelope/state record), which the sendmail and queue commands share.

Cost of accepting one small message: a share of one thread job (L{gateway.spool.group_commit})
that, for every message committed meanwhile, writes the message and its record into tmp/,
flushes all of them at once (one ``syncfs``, or one ``fdatasync`` per file where syncfs cannot
be trusted), renames them into the queue and fsyncs the queue directory once.  Per message
that is 8 system calls (open, write and close of the message and of its record, two renames;
a new record keeps the mtime its write gave it, see the package docstring's scheduling hint),
plus a share of the batch's syncfs and directory fsync.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.spool.commit_process import CommitProcess
from gateway.spool.conditions import RepeatedErrors
from gateway.spool.disk import (
    CommitRequest,
    EntryMissing,
    EntryQuarantined,
    IncomingScan,
    Quarantined,
    RecoveryReport,
    Refused,
    SpoolDisk,
)
from gateway.spool.entry import SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.filesystem import spool_filesystem_warning
from gateway.spool.group_commit import GroupCommitter
from gateway.spool.interfaces import IDraftJournal, IEntryQuarantine, IQueueSpool, ISpool, SpoolError
from gateway.spool.queueid import is_queue_id, new_queue_id
from gateway.spool.writer import CHUNK_SIZE, HIGH_WATER, LOW_WATER, DirectorySpoolWriter

_LOAD_BATCH = 500


@implementer(ISpool, IQueueSpool, IDraftJournal, IEntryQuarantine)
class DirectorySpool:
    """
    Also the deliverers' journal (L{IDraftJournal}: Graph draft ids kept in the record before
    the draft is filled) and quarantine (L{IEntryQuarantine}: entries whose message no longer
    matches its intake digest), injected into the Graph deliverer by the wiring.

    ``threadpool`` is the spool's dedicated pool (see L{gateway.threads.ThreadPoolService});
    ``reactor`` must provide IReactorTime and IReactorFromThreads.  ``fileops`` replaces the
    OS calls (tests: recording order, simulating a full disk).  ``node`` is stamped into the
    provenance of what this spool accepts (L{SpoolDisk}).
    """

    log = Logger()

    def __init__(self, directory: str, threadpool: Any, reactor: Any, archive_delivered: bool = False,
                 fileops: Optional[FileOps] = None, chunk_size: int = CHUNK_SIZE,
                 high_water: int = HIGH_WATER, low_water: int = LOW_WATER, hold_new: bool = False,
                 node: Optional[str] = None) -> None:
        self.disk = SpoolDisk(directory, fileops, clock=reactor.seconds, node=node)
        self.directory = self.disk.layout.root
        self.clock = reactor
        self.archive_delivered = archive_delivered
        #: ``[queue] hold_new``: intake commits into held/ (the runner is not told about it).
        self.hold_new = hold_new
        self._pool = threadpool
        self._reactor = reactor
        self.committer = GroupCommitter(self._run_commits, self.disk.publish_batch)
        self._commit_process: Optional[CommitProcess] = None
        self._writer_options = dict(chunk_size=chunk_size, high_water=high_water, low_water=low_water)
        self._commit_listeners: list[Callable[[SpoolEntry], None]] = []
        self._directories_ready = False
        # Draft ids noted by deliverers, by queue id, until the entry leaves the queue: every
        # state change the runner writes (from its own, possibly older, copy of the entry)
        # keeps the id noted last instead of reverting it.
        self._drafts: dict[str, Optional[str]] = {}
        #: Disk trouble during state changes, logged once per condition (ENOSPC for every
        #: message must not mean one CRITICAL line per message and attempt).
        self.conditions = RepeatedErrors(reactor)
        # Judges sendmail drop-offs as they are imported (the [local] policy chain): a callable
        # entry → Deferred firing None (deliver) or a refusal line (to failed/).  None: no judge.
        self.import_judge: Optional[Callable[[SpoolEntry], Deferred]] = None

    def judge_imports_with(self, judge: Optional[Callable[[SpoolEntry], Deferred]]) -> None:
        """
        Judge sendmail drop-offs with ``judge`` from now on (None: deliver them unjudged).  The
        judge is the ``[local]`` policy chain, built after the spool (the listeners need the
        spool), so start-up hands it over here, and SIGHUP hands over the rebuilt one.
        """
        self.import_judge = judge

    def _in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def commit_in_process(self, flush_per_file: bool = False, journal: bool = True) -> CommitProcess:
        """
        From now on run group commits in a child process (L{gateway.spool.commit_process}),
        started and stopped as the service returned; the daemon's choice (``[spool] committer``),
        with its intake journal unless ``[spool] journal`` is off.
        """
        acceptor = self.disk.acceptor
        self._commit_process = CommitProcess(self._reactor, acceptor, self.disk.files,
                                             lambda requests, journal, watch: self._in_pool(acceptor.undo, requests,
                                                                                             journal, watch),
                                             flush_per_file=flush_per_file, journal=journal)
        return self._commit_process

    def _run_commits(self, run_batch: Callable[..., Any], requests: list[CommitRequest]) -> Deferred:
        """A batch of commits: in the commit process if there is one, unless a message is in a temp file of ours."""
        process = self._commit_process
        if process is not None and all(request.temp is None for request in requests):
            answer = process.run_batch(requests)
            if answer is not None:
                return answer
        return self._in_pool(run_batch, requests)

    def _group_commit(self, request: CommitRequest) -> Deferred:
        """Accept one message durably, sharing the flushes with every commit in flight."""
        return self.committer.commit(request)

    def _state_change(self, kind: str, f: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run a state change in the pool; a L{SpoolError} (disk full, read-only, I/O error) is
        reported to L{conditions} — logged once per condition — and still fails the Deferred,
        so the caller keeps the message queued.  Callers need not log it again.
        """
        def worked(result: Any) -> Any:
            self.conditions.succeeded(kind)
            return result

        def failed(failure: Failure) -> Failure:
            if failure.check(SpoolError):
                error = failure.value
                self.conditions.failed(kind, getattr(error, "errno", None), _without_queue_id(str(error)))
            return failure

        return self._in_pool(f, *args).addCallbacks(worked, failed)

    # -- intake ----------------------------------------------------------------------------

    def open_writer(self) -> Deferred:
        writer = DirectorySpoolWriter(self, new_queue_id(self._reactor.seconds()), **self._writer_options)
        if self._directories_ready:
            return succeed(writer)
        # First use (intake may start before recovery finishes): make sure tmp/ and queue/ exist,
        # and that this process owns the spool — a second gateway on a spool another process
        # runs must answer 451, not acknowledge mail its own (refused) runner never delivers.
        return self._in_pool(self._prepare_intake).addCallback(self._ready, writer)

    def _prepare_intake(self) -> None:
        self.disk.ensure_directories()
        self.disk.acquire_lock(wait=self.disk.lock_wait)

    def _ready(self, _: Any, writer: DirectorySpoolWriter) -> DirectorySpoolWriter:
        self._directories_ready = True
        return writer

    def on_commit(self, callback: Callable[[SpoolEntry], None]) -> Callable[[], None]:
        self._commit_listeners.append(callback)
        return lambda: self._commit_listeners.remove(callback) if callback in self._commit_listeners else None

    def announce(self, queue_id: str) -> Deferred:
        """
        Another process of this gateway (an intake worker, L{gateway.workers}) committed
        ``queue_id`` into queue/: read its record and tell the commit listeners (the queue
        runner), as if this process had accepted it.  Fires with the entry, or None when it
        is no longer queued (delivered or moved meanwhile).
        """
        def told(entry: SpoolEntry) -> SpoolEntry:
            self._committed(entry)
            return entry

        return self.load(queue_id).addCallbacks(told, lambda f: f.trap(EntryMissing) and None)

    def _committed(self, entry: SpoolEntry) -> None:
        for callback in list(self._commit_listeners):
            try:
                callback(entry)
            except Exception:
                self.log.failure("commit listener failed for {queue_id}", queue_id=entry.queue_id)

    # -- recovery --------------------------------------------------------------------------

    def recover_schedule(self) -> Deferred:
        return self._in_pool(self._recover_disk).addCallback(self._judge_recovered).addCallback(self._report_recovery)

    def _recover_disk(self) -> RecoveryReport:
        """The disk's recovery, and whether its filesystem is slow or forgets (the daemon says so once)."""
        report = self.disk.recover()
        report.filesystem_warning = spool_filesystem_warning(self.disk.layout.tmp)
        return report

    def _judge_recovered(self, report: RecoveryReport) -> Deferred:
        def judged(refused: set) -> RecoveryReport:
            report.imported = [e for e in report.imported if e.queue_id not in refused]
            report.schedule = [item for item in report.schedule if item[1] not in refused]
            return report
        return self._judge_imports(report.imported).addCallback(judged)

    @inlineCallbacks
    def _judge_imports(self, entries: list) -> Any:
        """Run the import judge over freshly imported drop-offs; fail the refused ones.  Fires with their ids."""
        refused: set = set()
        if self.import_judge is None:
            return refused
        for entry in entries:
            try:
                reason = yield self.import_judge(entry)
            except Exception:
                self.log.failure("judging sendmail drop-off {queue_id} failed; delivering it", queue_id=entry.queue_id)
                continue
            if reason is None:
                continue
            try:
                yield self.fail(entry, f"refused by the [local] policy chain at import: {reason}")
            except Exception:
                self.log.failure("could not move refused drop-off {queue_id} to failed/", queue_id=entry.queue_id)
                continue
            refused.add(entry.queue_id)
            self.log.warn("sendmail drop-off {queue_id} from local user {user} refused by the [local] chain: {reason}",
                          queue_id=entry.queue_id, user=entry.provenance.auth_identity, reason=reason)
        return refused

    def _report_recovery(self, report: RecoveryReport) -> list:
        self._directories_ready = True
        self._log_incoming(report.quarantined, report.errors, report.refused)
        for note in report.completed_moves:
            self.log.info("recovery: {note}", note=note)
        for entry in report.imported:
            self._log_received(entry)
        self.log.info(
            "spool {directory} recovered: {queued} queued, {removed} unfinished files removed, "
            "{quarantined} quarantined", directory=self.directory, queued=len(report.schedule),
            removed=len(report.removed), quarantined=len(report.quarantined))
        if report.restored:
            self.log.warn("spool {directory}: {count} acknowledged entries a power loss had cut short were written "
                          "again from the intake journal: {ids}", directory=self.directory,
                          count=len(report.restored), ids=", ".join(report.restored))
        if report.kept_markers:
            self.log.warn("spool {directory}: could not flush its filesystem after checking the commits a crash cut "
                          "short; their markers stay in tmp/ ({markers}) and the next start checks them again",
                          directory=self.directory, markers=", ".join(report.kept_markers))
        if report.filesystem_warning:
            self.log.warn("spool {directory} is {note}", directory=self.directory, note=report.filesystem_warning)
        return report.schedule

    def recover(self) -> Deferred:
        """The full contract version: every queued entry loaded (in batches in the pool)."""
        def load_all(schedule: list) -> Deferred:
            ids = sorted(queue_id for _, queue_id in schedule)
            batches = [ids[i:i + _LOAD_BATCH] for i in range(0, len(ids), _LOAD_BATCH)]
            entries: list[SpoolEntry] = []

            def next_batch(_: Any = None) -> Any:
                if not batches:
                    return entries
                return self._in_pool(self._load_many, batches.pop(0)).addCallback(collect)

            def collect(result: tuple[list, list]) -> Any:
                loaded, quarantined = result
                entries.extend(loaded)
                for q in quarantined:
                    self._log_quarantine(q)
                return next_batch()

            return next_batch()

        return self.recover_schedule().addCallback(load_all)

    def _load_many(self, ids: Iterable[str]) -> tuple[list, list]:
        loaded, quarantined = [], []
        for queue_id in ids:
            try:
                loaded.append(self.disk.load(queue_id))
            except EntryQuarantined as e:
                quarantined.append(e)
            except EntryMissing:
                pass
        return loaded, quarantined

    def _log_quarantine(self, e: EntryQuarantined) -> None:
        self.log.warn("quarantined {queue_id}: {reason}", queue_id=e.queue_id, reason=e.reason)

    def _log_incoming(self, quarantined: list[Quarantined], errors: list[str], refused: list[Refused]) -> None:
        """What a pass over incoming/ (at start-up or while running) set aside, could not do, or failed."""
        for aside in quarantined:
            self.log.warn("quarantined {name}: {reason}", name=aside.name, reason=aside.reason)
        for error in errors:
            self.log.error("could not import from incoming/ (will retry): {error}", error=error)
        for item in refused:
            entry = item.entry
            if item.error is None:
                self.log.warn("sendmail drop-off {queue_id} from local user {user} failed: {reason}",
                              queue_id=entry.queue_id, user=entry.provenance.auth_identity, reason=item.reason)
            else:
                self.log.error("sendmail drop-off {queue_id} from local user {user}: {reason}, but it could not "
                               "be moved to failed/ ({error}); delivering it", queue_id=entry.queue_id,
                               user=entry.provenance.auth_identity, reason=item.reason, error=item.error)

    def _log_received(self, entry: SpoolEntry) -> None:
        self.log.info("received {queue_id} via sendmail from local user {user}, {count} recipient(s), {size} bytes",
                      queue_id=entry.queue_id, user=entry.provenance.auth_identity,
                      count=len(entry.envelope.recipients), size=entry.size,
                      **{"from": entry.envelope.sender, "to": list(entry.envelope.recipients)})

    def close(self) -> None:
        """Release the spool lock (tests, or a second spool on the same directory)."""
        self.disk.release_lock()

    # -- entries ---------------------------------------------------------------------------

    def load(self, queue_id: str) -> Deferred:
        def quarantined(f: Any) -> Any:
            if f.check(EntryQuarantined):
                self._log_quarantine(f.value)
            return f
        return self._in_pool(self.disk.load, queue_id).addErrback(quarantined)

    def update(self, entry: SpoolEntry) -> Deferred:
        if entry.queue_id in self._drafts:
            entry = attrs.evolve(entry, draft_id=self._drafts[entry.queue_id])
        return self._state_change("update", self.disk.write_record, entry)

    def remove(self, entry: SpoolEntry) -> Deferred:
        self._drafts.pop(entry.queue_id, None)
        return self._state_change("remove", self.disk.remove, entry, self.archive_delivered)

    def fail(self, entry: SpoolEntry, reason: str) -> Deferred:
        if entry.queue_id in self._drafts:
            entry = attrs.evolve(entry, draft_id=self._drafts.pop(entry.queue_id))
        return self._state_change("fail", self.disk.fail, entry, reason)

    def delete(self, queue_id: str) -> Deferred:
        self._drafts.pop(queue_id, None)
        return self._in_pool(self.disk.delete, queue_id)

    # -- IDraftJournal / IEntryQuarantine (for deliverers) ---------------------------------

    def note_draft(self, entry: SpoolEntry, draft_id: Optional[str]) -> Deferred:
        def noted(stored: SpoolEntry) -> None:
            self._drafts[entry.queue_id] = draft_id

        return self._state_change("update", self.disk.set_draft, entry.queue_id, draft_id).addCallback(noted)

    def draft_of(self, entry: SpoolEntry) -> Optional[str]:
        return self._drafts.get(entry.queue_id, entry.draft_id)

    def quarantine(self, entry: SpoolEntry, reason: str) -> Deferred:
        self._drafts.pop(entry.queue_id, None)
        return self._state_change("quarantine", self.disk.quarantine, entry, reason)

    def requeue(self, queue_id: str) -> Deferred:
        return self._in_pool(self.disk.requeue, queue_id)

    def hold(self, queue_id: str) -> Deferred:
        """Admin hold: queue/ → held/ (never attempted, never expires); fails with KeyError if not queued."""
        return self._in_pool(self.disk.hold, queue_id)

    def release(self, queue_id: str) -> Deferred:
        """Admin release: held/ → queue/; fires with the entry as queued again."""
        return self._in_pool(self.disk.release, queue_id)

    def held_ids(self) -> Deferred:
        def listing() -> list:
            try:
                return self.disk.queue_ids(self.disk.layout.held)
            except FileNotFoundError:
                return []
        return self._in_pool(listing)

    def scan_incoming(self) -> Deferred:
        def report(scan: IncomingScan) -> Deferred:
            self._log_incoming(scan.quarantined, scan.errors, scan.refused)
            for entry in scan.entries:
                self._log_received(entry)
            return self._judge_imports(scan.entries).addCallback(judged, scan)

        def judged(refused: set, scan: IncomingScan) -> IncomingScan:
            scan.entries = [e for e in scan.entries if e.queue_id not in refused]
            return scan
        return self._in_pool(self.disk.scan_incoming).addCallback(report)


def _without_queue_id(text: str) -> str:
    """The same error for two messages must read the same: drop the queue ids from the text."""
    return " ".join("<queue id>" if is_queue_id(word.strip(":,.")) else word for word in text.split())


__all__ = ["DirectorySpool", "SpoolError"]
