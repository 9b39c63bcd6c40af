"""
graphsmtp-queue: look at and manage the spool from the command line.

    graphsmtp-queue list              queued messages (id, age, size, sender, recipients,
                                      attempts, next attempt, last error)
    graphsmtp-queue show ID           one message's envelope, provenance, history, headers
    graphsmtp-queue failed            permanently failed messages and why
    graphsmtp-queue retry ID|--all    make queued messages due now  (flush = retry --all)
    graphsmtp-queue delete ID         drop a queued message for good
    graphsmtp-queue requeue ID        put a failed message back in the queue, due now

Interplay with the running daemon (safe either way):

- Reading (list, show, failed) works at any time: every file the daemon changes is replaced by
  an atomic rename, so the tool sees either the old or the new state of an entry.
- Changing (retry, delete, requeue) depends on whether the daemon holds the spool lock
  (``<spool>/lock``, flock).  When it does, the tool does not touch the queue itself — the
  daemon owns it and keeps its schedule in memory — but drops a request file into
  ``incoming/`` (``retry-<id>.ctl``, ``delete-<id>.ctl``, ``requeue-<id>.ctl``,
  ``retry-all.ctl``), which the daemon applies at its next scan (every few seconds); the tool
  waits for it to be picked up.  When no daemon runs, the tool takes the lock itself, makes
  the change with the same atomic protocols as the daemon, and releases it; a daemon starting
  meanwhile waits for the lock.

Exit status (sysexits.h), with a one-line message on standard error: 0 done, 64 usage, 66 no
such message, 70 internal error, 75 spool trouble (try again), 78 configuration error (no
spool at the configured place).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional, Sequence

import attrs

from gateway.cli.sendmail import load_tool_config
from gateway.config import ConfigError
from gateway.spool.disk import MSG, ControlRequest, EntryMissing, SpoolBusy, SpoolDisk
from gateway.spool.entry import SpoolEntry
from gateway.spool.interfaces import SpoolError
from gateway.spool.queueid import is_queue_id

EX_OK, EX_USAGE, EX_NOINPUT, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 0, 64, 66, 70, 75, 78
EX_NOTFOUND = EX_NOINPUT  # no such message


class QueueToolError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (not usage text plus a message)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise QueueToolError(EX_USAGE, f"{message} (see graphsmtp-queue --help)")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _when(at: float, now: float) -> str:
    if at <= now:
        return "now"
    return "in " + _age(at - now)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@attrs.define
class QueueTool:
    disk: SpoolDisk
    out: Callable[[str], None]
    now: Callable[[], float] = time.time
    wait: float = 15.0

    # -- reading ---------------------------------------------------------------------------

    def _entries(self, directory: str) -> list[SpoolEntry]:
        entries = []
        for queue_id in self.disk.queue_ids(directory):
            try:
                entries.append(self.disk.load(queue_id, directory=directory, quarantine=False))
            except (EntryMissing, SpoolError):
                continue  # changed while we were reading, or unreadable (the daemon quarantines)
        return entries

    def list(self) -> int:
        now = self.now()
        entries = self._entries(self.disk.layout.queue)
        waiting = self._entries(self.disk.layout.incoming)
        if not entries and not waiting:
            self.out("queue is empty")
            return EX_OK
        self.out(f"{'QUEUE ID':<19}  {'AGE':>6}  {'SIZE':>9}  {'SENDER':<30}  {'RCPT':>4}  {'TRIES':>5}  "
                 f"{'NEXT':>9}  LAST ERROR")
        for e, next_attempt in [(e, _when(e.next_attempt_at, now)) for e in entries] + [(e, "importing") for e in waiting]:
            last = e.history[-1].reason if e.history else ""
            self.out(f"{e.queue_id:<19}  {_age(now - e.received_at):>6}  {e.size:>9}  "
                     f"{_short(e.envelope.sender or '<>', 30):<30}  {len(e.envelope.recipients):>4}  "
                     f"{e.attempts:>5}  {next_attempt:>9}  {_short(last, 60)}")
        self.out(f"{len(entries) + len(waiting)} message(s), {sum(e.size for e in entries + waiting)} bytes")
        return EX_OK

    def failed(self) -> int:
        now = self.now()
        entries = self._entries(self.disk.layout.failed)
        if not entries:
            self.out("no failed messages")
            return EX_OK
        self.out(f"{'QUEUE ID':<19}  {'AGE':>6}  {'SENDER':<30}  {'RCPT':>4}  REASON")
        for e in entries:
            self.out(f"{e.queue_id:<19}  {_age(now - e.received_at):>6}  {_short(e.envelope.sender or '<>', 30):<30}  "
                     f"{len(e.envelope.recipients):>4}  {_short(self.disk.failure_reason(e.queue_id), 80)}")
        return EX_OK

    def show(self, queue_id: str) -> int:
        layout = self.disk.layout
        for directory, state in ((layout.queue, "queued"), (layout.failed, "failed"), (layout.incoming, "arriving from sendmail")):
            try:
                entry = self.disk.load(queue_id, directory=directory, quarantine=False)
            except EntryMissing:
                continue
            break
        else:
            raise QueueToolError(EX_NOTFOUND, f"no message {queue_id} in the queue, failed/ or incoming/")
        now = self.now()
        p = entry.provenance
        self.out(f"queue id:      {entry.queue_id} ({state})")
        if state == "failed":
            self.out(f"failure:       {self.disk.failure_reason(queue_id)}")
        self.out(f"received:      {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(entry.received_at))} ({_age(now - entry.received_at)} ago)")
        self.out(f"from client:   {p.client_name} [{p.client_address}] on listener {p.listener}, "
                 f"tls={'yes' if p.tls else 'no'}, auth={p.auth_identity or '-'}")
        if p.credential_ref:
            self.out(f"credentials:   {p.credential_ref}")
        self.out(f"sender:        <{entry.envelope.sender}>")
        for r in entry.envelope.recipients:
            self.out(f"recipient:     <{r}>")
        self.out(f"size:          {entry.size} bytes")
        self.out(f"attempts:      {entry.attempts}" + (f", next {_when(entry.next_attempt_at, now)}" if state == "queued" else ""))
        for h in entry.history:
            self.out(f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h.at))}  {h.reason}")
        self.out("headers:")
        for line in self._header_lines(entry.message_path):
            self.out("  " + line)
        return EX_OK

    @staticmethod
    def _header_lines(path: str, limit: int = 64 * 1024) -> list[str]:
        with open(path, "rb") as f:
            head = f.read(limit)
        end = head.find(b"\r\n\r\n")
        head = head if end < 0 else head[:end]
        return head.decode("utf-8", "replace").split("\r\n")

    # -- changing --------------------------------------------------------------------------

    def _check_id(self, queue_id: str) -> None:
        if not is_queue_id(queue_id):
            raise QueueToolError(EX_USAGE, f"{queue_id!r} is not a queue id (see graphsmtp-queue list)")

    def _via_daemon_or_offline(self, request: ControlRequest, offline: Callable[[], int]) -> int:
        pid = self.disk.daemon_pid()
        if pid is None:
            try:
                self.disk.acquire_lock(wait=0.0)
            except SpoolBusy:
                pid = -1  # a daemon started just now
            else:
                try:
                    return offline()
                finally:
                    self.disk.release_lock()
        path = self.disk.request_control(request)
        deadline = time.monotonic() + self.wait
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        if os.path.exists(path):
            self.out(f"asked the running daemon{f' (pid {pid})' if pid and pid > 0 else ''} to "
                     f"{request.action} {request.target}; it has not picked the request up yet "
                     "(it will at its next scan)")
        else:
            self.out(f"the running daemon picked up: {request.action} {request.target}")
        return EX_OK

    def retry(self, queue_id: Optional[str]) -> int:
        target = queue_id or "all"
        if queue_id:
            self._check_id(queue_id)
            self._require(queue_id, self.disk.layout.queue)

        def offline() -> int:
            ids = [queue_id] if queue_id else self.disk.queue_ids()
            for qid in ids:
                try:
                    entry = self.disk.load(qid)
                except EntryMissing:
                    continue
                self.disk.write_record(attrs.evolve(entry, next_attempt_at=0.0))
            self.out(f"{len(ids)} message(s) due now; the daemon delivers them when it starts")
            return EX_OK

        return self._via_daemon_or_offline(ControlRequest("retry", target), offline)

    def delete(self, queue_id: str) -> int:
        self._check_id(queue_id)
        self._require(queue_id, self.disk.layout.queue)

        def offline() -> int:
            if not self.disk.delete(queue_id):
                raise QueueToolError(EX_NOTFOUND, f"no queued message {queue_id}")
            self.out(f"deleted {queue_id}")
            return EX_OK

        return self._via_daemon_or_offline(ControlRequest("delete", queue_id), offline)

    def requeue(self, queue_id: str) -> int:
        self._check_id(queue_id)
        self._require(queue_id, self.disk.layout.failed)

        def offline() -> int:
            self.disk.requeue(queue_id)
            self.out(f"requeued {queue_id}; the daemon delivers it when it starts")
            return EX_OK

        return self._via_daemon_or_offline(ControlRequest("requeue", queue_id), offline)

    def _require(self, queue_id: str, directory: str) -> None:
        if not os.path.exists(os.path.join(directory, queue_id + MSG)):
            where = "failed/" if directory == self.disk.layout.failed else "the queue"
            raise QueueToolError(EX_NOTFOUND, f"no message {queue_id} in {where}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphsmtp-queue", description="Inspect and manage the graphsmtp spool.")
    parser.add_argument("--config", "-c", help="TOML configuration (default: $GRAPHSMTP_CONFIG, /etc/graphsmtp/graphsmtp.toml, built-in defaults)")
    parser.add_argument("--spool", help="spool directory (overrides the configuration)")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the running daemon to pick up a request")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="queued messages")
    sub.add_parser("failed", help="permanently failed messages")
    for name, help_text in (("show", "one message in detail"), ("delete", "drop a queued message"),
                            ("requeue", "put a failed message back in the queue")):
        sub.add_parser(name, help=help_text).add_argument("queue_id")
    retry = sub.add_parser("retry", help="make queued messages due now")
    group = retry.add_mutually_exclusive_group(required=True)
    group.add_argument("queue_id", nargs="?")
    group.add_argument("--all", action="store_true")
    sub.add_parser("flush", help="same as retry --all")
    return parser


def main(argv: Optional[Sequence[str]] = None, environ=None, out: Callable[[str], None] = print) -> int:
    try:
        return _run(argv, os.environ if environ is None else environ, out)
    except QueueToolError as e:
        _complain(str(e))
        return e.status
    except (SpoolError, OSError) as e:
        _complain(f"spool problem: {e}")
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        _complain("interrupted")
        return EX_TEMPFAIL
    except Exception as e:  # a bug: still one line and a sysexits status, never a traceback
        _complain(f"internal error: {type(e).__name__}: {e}")
        return EX_SOFTWARE


def _complain(message: str) -> None:
    print("graphsmtp-queue: " + " ".join(message.split()), file=sys.stderr)


def _run(argv: Optional[Sequence[str]], environ, out: Callable[[str], None]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help
        return EX_OK if e.code == 0 else EX_USAGE
    try:
        config = load_tool_config(args.config, args.spool, environ)
    except ConfigError as e:
        raise QueueToolError(EX_CONFIG, f"configuration error: {e}") from None
    spool_dir = config.spool.directory
    if not os.path.isdir(os.path.join(spool_dir, "queue")):
        raise QueueToolError(EX_CONFIG, f"no spool at {spool_dir} (wrong --config or --spool?)")
    tool = QueueTool(SpoolDisk(spool_dir), out, wait=args.wait)
    if args.command == "list":
        return tool.list()
    if args.command == "failed":
        return tool.failed()
    if args.command == "show":
        return tool.show(args.queue_id)
    if args.command == "delete":
        return tool.delete(args.queue_id)
    if args.command == "requeue":
        return tool.requeue(args.queue_id)
    if args.command == "flush":
        return tool.retry(None)
    return tool.retry(None if args.all else args.queue_id)


if __name__ == "__main__":
    sys.exit(main())
