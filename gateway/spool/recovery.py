"""
Start-up recovery: clear this spool's stale temp files, finish sendmail imports and admin
moves a crash cut short, delete halves that were never acknowledged, quarantine what cannot be
an entry (and entries a power loss left incomplete, L{gateway.spool.inflight}), and hand the
runner the schedule hints of everything queued.

What each leftover means — and so whether recovery completes, undoes or deletes it — follows
from the protocols in the L{gateway.spool} package docstring.  Blocking: a spool thread.
"""

from __future__ import annotations

import os
from typing import Optional

import attrs

from gateway.spool import inflight
from gateway.spool.accept import Acceptor
from gateway.spool.entry import SpoolEntry
from gateway.spool.fileops import quietly, spool_error
from gateway.spool.incoming import DropBox, Refused
from gateway.spool.journal import JOURNAL, JournalError, boot_id, mend, read_journal
from gateway.spool.layout import ENV, MSG, REASON, SpoolFiles, SpoolLayout
from gateway.spool.quarantine import Quarantine, Quarantined
from gateway.spool.queueid import is_queue_id


@attrs.define
class RecoveryReport:
    """
    What start-up recovery found.  ``schedule`` is ``(due_hint, queue_id)`` for every complete
    entry, built from names and one stat each — the runner loads records lazily.
    """

    schedule: list[tuple[float, str]] = attrs.field(factory=list)
    imported: list[SpoolEntry] = attrs.field(factory=list)
    removed: list[str] = attrs.field(factory=list)
    completed_moves: list[str] = attrs.field(factory=list)
    quarantined: list[Quarantined] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    refused: list[Refused] = attrs.field(factory=list)
    #: Markers of commits a crash cut short (L{gateway.spool.inflight}) that stay because the
    #: filesystem could not be flushed after their check: the next start checks them again.
    kept_markers: list[str] = attrs.field(factory=list)
    #: Entries written again from an intake journal after another boot (L{gateway.spool.journal}).
    restored: list[str] = attrs.field(factory=list)
    #: What is wrong with the spool's filesystem (slow new files, or contents it loses), if anything:
    #: L{gateway.spool.filesystem.spool_filesystem_warning}.
    filesystem_warning: Optional[str] = None


@attrs.frozen
class _QueueListing:
    """One listing of queue/: ids with a message, ids with a record (and its mtime), the rest."""

    messages: set[str]
    records: dict[str, float]
    odd: list[str]


class Recovery:
    """
    The start-up pass over a spool this process has just locked.  Reads names and one stat per
    entry; records are not parsed here (the runner loads them when they are due).
    """

    def __init__(self, files: SpoolFiles, acceptor: Acceptor, drop_box: DropBox, quarantine: Quarantine) -> None:
        self._files = files
        self._acceptor = acceptor
        self._drop_box = drop_box
        self._quarantine = quarantine

    def run(self) -> RecoveryReport:
        """Recover the spool (its lock must be held); L{SpoolError} if it cannot be read."""
        report = RecoveryReport()
        # Opened before anything is written again: a write of this recovery's that the kernel
        # fails is reported to the flush through it (L{inflight.settle}).
        watch = inflight.watch_descriptor(self._files.layout.tmp)
        try:
            markers, journals = self._clear_tmp(report)
            self._replay_journals(journals, report)
            ranges = inflight.id_ranges(markers)
            if ranges:
                report.quarantined.extend(inflight.quarantine_incomplete(self._files, self._quarantine, ranges))
            settled = markers + journals
            if settled and not inflight.settle(self._files.ops, self._files.layout.tmp, settled, watch):
                report.kept_markers.extend(os.path.basename(path) for path in settled)
            # Requests stay in incoming/ for the runner's first scan, after it has a schedule.
            scan = self._drop_box.scan(take_requests=False)
            report.imported.extend(scan.entries)
            report.quarantined.extend(scan.quarantined)
            report.errors.extend(scan.errors)
            report.refused.extend(scan.refused)
            self._recover_queue(report)
            self._recover_failed(report)
        except OSError as e:
            raise spool_error(e, "recover the spool") from None
        finally:
            if watch is not None:
                os.close(watch)
        return report

    def _clear_tmp(self, report: RecoveryReport) -> tuple[list[str], list[str]]:
        """
        Remove other processes' temp files; returns their markers of batches cut short and
        their intake journals, which stay until their entries are checked or restored and the
        filesystem flushed (L{inflight.settle}).  This process's own files stay: intake may
        already be writing them.
        """
        prefix = self._files.tag + "."
        with os.scandir(self._files.layout.tmp) as it:
            others = sorted(e.path for e in it if not e.name.startswith(prefix))
        markers: list[str] = []
        journals: list[str] = []
        for path in others:
            if path.endswith(inflight.INFLIGHT):
                markers.append(path)
            elif path.endswith(JOURNAL):
                journals.append(path)
            elif quietly(self._files.ops.unlink, path) is None:
                report.removed.append(path)
        return markers, journals

    def _replay_journals(self, journals: list[str], report: RecoveryReport) -> None:
        """
        Write again what the journals' entries may have lost (L{gateway.spool.journal.mend}):
        after another boot what the disk lost, on the same boot every file they still have.  A
        journal with no readable header is set aside (it can say nothing about which of its
        frames count); one that cannot be worked through (a full disk) stays for the next start,
        and the rest of recovery goes on.
        """
        boot = boot_id()
        for path in list(journals):
            try:
                contents = read_journal(path)
            except (OSError, JournalError) as e:
                journals.remove(path)
                if quietly(self._quarantine.move_file, path) is None:
                    report.quarantined.append(Quarantined(os.path.basename(path), f"unreadable intake journal: {e}"))
                continue
            try:
                written = mend(self._files, contents.entries, same_boot=contents.boot == boot)
            except OSError as e:
                journals.remove(path)
                report.kept_markers.append(os.path.basename(path))
                report.errors.append(f"intake journal {os.path.basename(path)} kept for the next start: {e}")
                continue
            if contents.boot != boot:
                report.restored.extend(written)

    def _list_queue(self) -> _QueueListing:
        listing = _QueueListing(set(), {}, [])
        with os.scandir(self._files.layout.queue) as it:
            for e in it:
                queue_id, dot, suffix = e.name.partition(".")
                if dot and is_queue_id(queue_id) and "." + suffix == MSG:
                    listing.messages.add(queue_id)
                elif dot and is_queue_id(queue_id) and "." + suffix == ENV:
                    try:
                        listing.records[queue_id] = e.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        listing.records[queue_id] = 0.0
                else:
                    listing.odd.append(e.name)
        return listing

    def _recover_queue(self, report: RecoveryReport) -> None:
        q = self._files.layout.queue
        listing = self._list_queue()
        for name in listing.odd:
            if quietly(self._quarantine.move_file, os.path.join(q, name)) is None:
                report.quarantined.append(Quarantined(name, "not a queue file"))
        for queue_id in listing.messages - listing.records.keys():
            self._recover_lone_message(queue_id, report)
        for queue_id, mtime in listing.records.items():
            # A listing is no snapshot: a commit running meanwhile can show its record but not
            # the message renamed in just before it.  Look again before calling it lone.
            if queue_id in listing.messages or os.path.exists(SpoolLayout.path(q, queue_id, MSG)):
                report.schedule.append((mtime, queue_id))
            else:
                self._recover_lone_record(queue_id, report)

    def _recover_lone_message(self, queue_id: str, report: RecoveryReport) -> None:
        layout = self._files.layout
        q_msg = SpoolLayout.path(layout.queue, queue_id, MSG)
        if self._acceptor.is_committing(queue_id):
            return
        if os.path.exists(SpoolLayout.path(layout.queue, queue_id, ENV)):
            return  # a commit finished while we were listing
        if os.path.exists(SpoolLayout.path(layout.incoming, queue_id, ENV)):
            return  # a half-done import of a sendmail message: the next incoming scan finishes it
        for where, label, what in ((layout.failed, "failed/", "requeue"), (layout.held, "held/", "release")):
            if os.path.exists(SpoolLayout.path(where, queue_id, ENV)) and not os.path.exists(
                    SpoolLayout.path(where, queue_id, MSG)):
                self._files.ops.rename(q_msg, SpoolLayout.path(where, queue_id, MSG))
                report.completed_moves.append(f"{queue_id}: interrupted {what} undone, back in {label}")
                return
        if quietly(self._files.ops.unlink, q_msg) is None:
            report.removed.append(q_msg)

    def _recover_lone_record(self, queue_id: str, report: RecoveryReport) -> None:
        layout = self._files.layout
        q_env = SpoolLayout.path(layout.queue, queue_id, ENV)
        for where, label in ((layout.failed, "failed/"), (layout.archive, "archive/"), (layout.held, "held/")):
            if os.path.exists(SpoolLayout.path(where, queue_id, MSG)):
                target = SpoolLayout.path(where, queue_id, ENV)
                if os.path.exists(target):
                    self._files.ops.unlink(q_env)
                else:
                    self._files.ops.rename(q_env, target)
                report.completed_moves.append(f"{queue_id}: interrupted move to {label} completed")
                return
        if quietly(self._quarantine.move_file, q_env) is None:
            report.quarantined.append(Quarantined(queue_id + ENV, "record without a message file"))

    def _recover_failed(self, report: RecoveryReport) -> None:
        layout = self._files.layout
        for f in (layout.failed, layout.held):
            with os.scandir(f) as it:
                names = {e.name for e in it}
            for name in names:
                queue_id, _, suffix = name.partition(".")
                if "." + suffix == ENV and queue_id + MSG not in names and os.path.exists(
                        SpoolLayout.path(layout.queue, queue_id, ENV)):
                    # requeue/release finished except for clearing failed/ or held/
                    quietly(self._files.ops.unlink, os.path.join(f, name))
                    quietly(self._files.ops.unlink, SpoolLayout.path(f, queue_id, REASON))


__all__ = ["Recovery", "RecoveryReport"]
