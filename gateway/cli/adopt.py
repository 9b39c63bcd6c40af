"""
``graphsmtp-queue adopt DIR``: take over the spool of a gateway that is gone for good (a disk or
volume restored from a dead node) into this node's spool, without losing or duplicating a
message, whether this node's daemon runs or not.

For each complete entry of DIR (queued or held; DIR's half-done protocols are finished first by
its own recovery, under its lock, so nothing else changes it meanwhile):

1. if this spool already has the queue id (queued, held, failed, archived or arriving), the
   entry was adopted before (an earlier run stopped half-way) and is not copied again;
2. otherwise message and record are written here with the acceptance protocol (temp files,
   fsync, rename, directory fsync) -- the queue id, the envelope, the provenance, the history
   and the digest recorded at intake are kept, so logs of the dead node still match;
3. only then are DIR's files moved into ``DIR/adopted/`` (record first).

A crash at any point leaves the entry either still in DIR (run adopt again) or here (the next
run sees it and only moves DIR's copy aside).  Queue ids are unique across gateways (time +
40 random bits), so an id already here *is* the same message; its digest is compared to be
sure, and a mismatch is reported, never overwritten.

When this node's daemon runs, adopt asks it (``retry-<id>.ctl``) to schedule each adopted entry
now; held entries are put on hold again the same way.  Without a daemon, its start-up finds
them in queue/.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import attrs

from gateway.cli.sysexits import EX_DATAERR, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE
from gateway.spool.disk import (
    ENV,
    MSG,
    ControlRequest,
    SpoolBusy,
    SpoolDisk,
    SpoolLayout,
)
from gateway.spool.entry import SpoolEntry

CHUNK = 1 << 20


@attrs.define
class AdoptReport:
    adopted: list[str] = attrs.field(factory=list)
    already: list[str] = attrs.field(factory=list)
    conflicts: list[str] = attrs.field(factory=list)
    held: list[str] = attrs.field(factory=list)


def _known_here(disk: SpoolDisk, queue_id: str) -> str:
    """Where this spool already has ``queue_id`` (a directory path), or ''."""
    layout = disk.layout
    for directory in (layout.queue, layout.held, layout.failed, layout.archive, layout.incoming):
        if os.path.exists(SpoolLayout.path(directory, queue_id, ENV)):
            return directory
    return ""


def _copy_in(target: SpoolDisk, entry: SpoolEntry) -> SpoolEntry:
    temp = target.create_temp(entry.queue_id)
    try:
        with open(entry.message_path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                target.append(temp, (chunk,))  # streamed: memory does not grow with the message
    except BaseException:
        if temp.fd is not None:
            os.close(temp.fd)
        try:
            os.unlink(temp.path)
        except OSError:
            pass
        raise
    return target.publish(temp, entry)


def _set_aside(source: SpoolDisk, directory: str, queue_id: str) -> None:
    """Record first: from then on DIR no longer has a complete entry for it."""
    aside = os.path.join(source.layout.root, "adopted")
    os.makedirs(aside, mode=0o700, exist_ok=True)
    for suffix in (ENV, MSG):
        path = SpoolLayout.path(directory, queue_id, suffix)
        if os.path.exists(path):
            os.rename(path, SpoolLayout.path(aside, queue_id, suffix))
    fd = os.open(aside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def adopt(target: SpoolDisk, source_dir: str, out: Callable[[str], None]) -> int:
    """Adopt every entry of ``source_dir`` into ``target``; returns a sysexits status."""
    source = SpoolDisk(source_dir)
    refused = _unusable_source(target, source, source_dir)
    if refused is not None:
        status, reason = refused
        out(f"graphsmtp-queue: adopt: {reason}")
        return status
    try:
        source.acquire_lock(wait=0.0)
    except SpoolBusy:
        out(f"graphsmtp-queue: adopt: a gateway still runs on {source_dir} (its spool is locked); stop it first")
        return EX_TEMPFAIL
    try:
        source.recover()  # finish DIR's half-done protocols (imports, moves) before reading it
        report = _adopt_entries(target, source)
    finally:
        source.release_lock()
    _schedule(target, report, out)
    return _summary(report, source_dir, out)


def _unusable_source(target: SpoolDisk, source: SpoolDisk, source_dir: str) -> Optional[tuple[int, str]]:
    """Why DIR cannot be adopted (status and reason), or None."""
    if os.path.realpath(source.layout.root) == os.path.realpath(target.layout.root):
        return EX_USAGE, "DIR is this gateway's own spool"
    if not os.path.isdir(source.layout.queue):
        return EX_NOINPUT, f"no spool at {source_dir} (no queue/ directory)"
    return None


def _adopt_entries(target: SpoolDisk, source: SpoolDisk) -> AdoptReport:
    """Every complete entry of DIR's queue/ and held/, in that order; DIR is locked and recovered."""
    report = AdoptReport()
    for directory, held in ((source.layout.queue, False), (source.layout.held, True)):
        try:
            ids = source.queue_ids(directory)
        except FileNotFoundError:
            continue
        for queue_id in ids:
            _adopt_entry(target, source, directory, queue_id, held, report)
    return report


def _adopt_entry(target: SpoolDisk, source: SpoolDisk, directory: str, queue_id: str, held: bool,
                 report: AdoptReport) -> None:
    """Steps 1-3 of the module docstring for one entry; a digest conflict leaves it in DIR."""
    entry = source.load(queue_id, directory)
    where = _known_here(target, queue_id)
    if where:
        mine = target.load(queue_id, where, quarantine=False)
        if entry.message_digest and mine.message_digest and entry.message_digest != mine.message_digest:
            report.conflicts.append(queue_id)
            return
        report.already.append(queue_id)
    else:
        _copy_in(target, entry)
        report.adopted.append(queue_id)
        if held:
            report.held.append(queue_id)
    _set_aside(source, directory, queue_id)


def _schedule(target: SpoolDisk, report: AdoptReport, out: Callable[[str], None]) -> None:
    """A running daemon is asked to schedule (or hold) the adopted entries; else held ones are held here."""
    requests = [ControlRequest("retry", q) for q in report.adopted if q not in report.held]
    requests += [ControlRequest("hold", q) for q in report.held]
    if requests and target.daemon_pid() is not None:
        for request in requests:
            target.request_control(request)
        out(f"asked the running daemon to schedule {len(report.adopted)} adopted message(s)")
    elif report.held:
        _hold_offline(target, report.held)


def _hold_offline(target: SpoolDisk, queue_ids: list[str]) -> None:
    try:
        target.acquire_lock(wait=0.0)
    except SpoolBusy:  # a daemon started just now: ask it instead
        for queue_id in queue_ids:
            target.request_control(ControlRequest("hold", queue_id))
        return
    try:
        for queue_id in queue_ids:
            target.hold(queue_id)
    finally:
        target.release_lock()


def _summary(report: AdoptReport, source_dir: str, out: Callable[[str], None]) -> int:
    out(f"adopted {len(report.adopted)} message(s) from {source_dir}"
        + (f"; {len(report.already)} were already here" if report.already else "")
        + (f"; {len(report.held)} kept on hold" if report.held else ""))
    if report.conflicts:
        out(f"graphsmtp-queue: adopt: {len(report.conflicts)} queue id(s) exist here with different content "
            f"and were left in {source_dir}: {', '.join(report.conflicts[:5])}")
        return EX_DATAERR
    return EX_OK


__all__ = ["adopt", "AdoptReport"]
