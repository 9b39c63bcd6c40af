"""
graphsmtp-queue: look at and manage the spool from the command line (Postfix habits: mailq,
postcat, postsuper -h/-H/-r/-d, postqueue -f, qshape).

    graphsmtp-queue list [filters] [--json]   queued, held and arriving messages (id, age,
                                              size, sender, recipients, attempts, next
                                              attempt or "held", last error)
    graphsmtp-queue show ID [--json]          one message's envelope, provenance, history,
                                              headers
    graphsmtp-queue failed [filters] [--json] permanently failed messages and why
    graphsmtp-queue hold ID|--all|--mailbox M put queued messages on hold: never attempted,
                                              never expired, until released
    graphsmtp-queue release ID|--all|--mailbox M   back into the queue, schedule kept
    graphsmtp-queue retry ID|--all            make queued messages due now
    graphsmtp-queue flush                     attempt every queued message now (retry --all)
    graphsmtp-queue delete ID                 drop a queued message for good
    graphsmtp-queue requeue ID                put a failed message back in the queue, due now
    graphsmtp-queue adopt DIR                 take over a dead gateway's spool (no loss, no
                                              duplicate; see gateway.cli.adopt)
    graphsmtp-queue summary [--by mailbox|domain] [--state queued|held|failed] [--json]
                                              qshape-like counts by age bucket

Filters of list and failed: ``--mailbox M`` (the sending mailbox decided at intake, or the
envelope sender for entries that have none), ``--older-than 1h`` (any duration the
configuration accepts: 90s, 5m, 2h, 3d), ``--reason TEXT`` (case-insensitive part of the last
error or failure reason).

``--json`` prints one JSON document: ``{"version": 1, "messages": [...]}`` for list, failed
and show (show: one message), ``{"version": 1, "by": ..., "buckets": [...], "rows": [...]}``
for summary.  The fields of a message are documented in README.md ("Queue tool") and only
ever gain new keys: queue_id, state, received_at, age_seconds, size, sender, recipients,
sending_mailbox, attempts, next_attempt_at, last_error, failure_reason, client, history.

Interplay with the running daemon (safe either way):

- Reading (list, show, failed, summary) works at any time: every file the daemon changes is
  replaced by an atomic rename, so the tool sees either the old or the new state of an entry.
- Changing (hold, release, retry, flush, delete, requeue) depends on whether the daemon holds
  the spool lock (``<spool>/lock``, flock).  When it does, the tool does not touch the queue
  itself — the daemon owns it and keeps its schedule in memory — but drops request files into
  ``incoming/`` (``<action>-<id>.ctl``, ``retry-all.ctl``, ``hold-all.ctl``,
  ``release-all.ctl``), which the daemon applies at its next scan (at once with inotify); the
  tool waits for them to be picked up.  When no daemon runs, the tool takes the lock itself,
  makes the change with the same atomic protocols as the daemon, and releases it; a daemon
  starting meanwhile waits for the lock.

Exit status (sysexits.h), with a one-line message on standard error: 0 done, 64 usage, 66 no
such message, 70 internal error, 75 spool trouble (try again), 78 configuration error (no
spool at the configured place).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

import attrs

from gateway.cli.queue_view import (
    JSON_VERSION,
    Filters,
    last_error,
    message_json,
    summarise,
    summary_json,
    summary_lines,
)
from gateway.cli.sysexits import EX_CONFIG, EX_NOINPUT, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE
from gateway.cli.tool_config import load_tool_config
from gateway.config import ConfigError
from gateway.config.reader import parse_duration
from gateway.spool.disk import (
    ALL,
    MSG,
    ControlRequest,
    EntryMissing,
    SpoolBusy,
    SpoolDisk,
)
from gateway.spool.entry import SpoolEntry
from gateway.spool.interfaces import SpoolError
from gateway.spool.queueid import is_queue_id

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


def _next_column(state: str, next_attempt_at: float, now: float) -> str:
    """The NEXT column: only a queued entry has an attempt time; the others say why not."""
    if state == "queued":
        return _when(next_attempt_at, now)
    return {"held": "held", "incoming": "importing"}[state]


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

    def _directory(self, state: str) -> str:
        layout = self.disk.layout
        return {"queued": layout.queue, "held": layout.held, "failed": layout.failed,
                "incoming": layout.incoming}[state]

    def _entries(self, state: str) -> list[SpoolEntry]:
        directory = self._directory(state)
        entries = []
        try:
            ids = self.disk.queue_ids(directory)
        except FileNotFoundError:
            return []  # held/ of a spool no daemon has started on since it was added
        for queue_id in ids:
            try:
                entries.append(self.disk.load(queue_id, directory=directory, quarantine=False))
            except (EntryMissing, SpoolError):
                continue  # changed while we were reading, or unreadable (the daemon quarantines)
        return entries

    def _print_json(self, document: dict) -> None:
        self.out(json.dumps(document, indent=2, ensure_ascii=False))

    def list(self, filters: Filters = Filters(), as_json: bool = False) -> int:
        now = self.now()
        rows = [(state, e) for state in ("queued", "held", "incoming") for e in self._entries(state)
                if filters.matches(e, now)]
        if as_json:
            self._print_json({"version": JSON_VERSION,
                              "messages": [message_json(e, state, now) for state, e in rows]})
            return EX_OK
        if not rows:
            self.out("queue is empty" if filters == Filters() else "no message matches")
            return EX_OK
        self.out(f"{'QUEUE ID':<19}  {'AGE':>6}  {'SIZE':>9}  {'SENDER':<30}  {'RCPT':>4}  {'TRIES':>5}  "
                 f"{'NEXT':>9}  LAST ERROR")
        for state, e in rows:
            next_attempt = _next_column(state, e.next_attempt_at, now)
            self.out(f"{e.queue_id:<19}  {_age(now - e.received_at):>6}  {e.size:>9}  "
                     f"{_short(e.envelope.sender or '<>', 30):<30}  {len(e.envelope.recipients):>4}  "
                     f"{e.attempts:>5}  {next_attempt:>9}  {_short(last_error(e) or '', 60)}")
        held = sum(1 for state, _ in rows if state == "held")
        self.out(f"{len(rows)} message(s), {sum(e.size for _, e in rows)} bytes"
                 + (f", {held} held" if held else ""))
        return EX_OK

    def failed(self, filters: Filters = Filters(), as_json: bool = False) -> int:
        now = self.now()
        rows = []
        for e in self._entries("failed"):
            reason = self.disk.failure_reason(e.queue_id)
            if filters.matches(e, now, reason):
                rows.append((e, reason))
        if as_json:
            self._print_json({"version": JSON_VERSION,
                              "messages": [message_json(e, "failed", now, reason) for e, reason in rows]})
            return EX_OK
        if not rows:
            self.out("no failed messages")
            return EX_OK
        self.out(f"{'QUEUE ID':<19}  {'AGE':>6}  {'SENDER':<30}  {'RCPT':>4}  REASON")
        for e, reason in rows:
            self.out(f"{e.queue_id:<19}  {_age(now - e.received_at):>6}  {_short(e.envelope.sender or '<>', 30):<30}  "
                     f"{len(e.envelope.recipients):>4}  {_short(reason, 80)}")
        return EX_OK

    def _find(self, queue_id: str) -> tuple[str, SpoolEntry]:
        for state in ("queued", "held", "failed", "incoming"):
            try:
                return state, self.disk.load(queue_id, directory=self._directory(state), quarantine=False)
            except EntryMissing:
                continue
        raise QueueToolError(EX_NOTFOUND, f"no message {queue_id} in the queue, held/, failed/ or incoming/")

    def show(self, queue_id: str, as_json: bool = False) -> int:
        state, entry = self._find(queue_id)
        now = self.now()
        reason = self.disk.failure_reason(queue_id) if state == "failed" else None
        if as_json:
            self._print_json({"version": JSON_VERSION, "messages": [message_json(entry, state, now, reason)]})
            return EX_OK
        p = entry.provenance
        label = {"queued": "queued", "held": "held", "failed": "failed", "incoming": "arriving from sendmail"}[state]
        self.out(f"queue id:      {entry.queue_id} ({label})")
        if state == "failed":
            self.out(f"failure:       {reason}")
        self.out(f"received:      {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(entry.received_at))} ({_age(now - entry.received_at)} ago)")
        self.out(f"from client:   {p.client_name} [{p.client_address}] on listener {p.listener}, "
                 f"tls={'yes' if p.tls else 'no'}, auth={p.auth_identity or '-'}")
        if p.node:
            self.out(f"accepted by:   {p.node}")
        if p.credential_ref:
            self.out(f"credentials:   {p.credential_ref}")
        if entry.sending_mailbox:
            self.out(f"mailbox:       {entry.sending_mailbox}")
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

    def summary(self, by: str = "mailbox", state: str = "queued", as_json: bool = False) -> int:
        total, rows = summarise(self._entries(state), self.now(), by)
        if as_json:
            self._print_json(summary_json(total, rows, by, state))
        else:
            for line in summary_lines(total, rows):
                self.out(line)
        return EX_OK

    @staticmethod
    def _header_lines(path: str, limit: int = 64 * 1024) -> Sequence[str]:
        with open(path, "rb") as f:
            head = f.read(limit)
        end = head.find(b"\r\n\r\n")
        head = head if end < 0 else head[:end]
        return head.decode("utf-8", "replace").split("\r\n")

    # -- changing --------------------------------------------------------------------------

    def _check_id(self, queue_id: str) -> None:
        if not is_queue_id(queue_id):
            raise QueueToolError(EX_USAGE, f"{queue_id!r} is not a queue id (see graphsmtp-queue list)")

    def _via_daemon_or_offline(self, requests: Sequence[ControlRequest], offline: Callable[[], int]) -> int:
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
        paths = [self.disk.request_control(request) for request in requests]
        deadline = time.monotonic() + self.wait
        while any(os.path.exists(path) for path in paths) and time.monotonic() < deadline:
            time.sleep(0.1)
        what = ", ".join(f"{r.action} {r.target}" for r in requests[:3]) + (
            f" and {len(requests) - 3} more" if len(requests) > 3 else "")
        if any(os.path.exists(path) for path in paths):
            self.out(f"asked the running daemon{f' (pid {pid})' if pid and pid > 0 else ''} to "
                     f"{what}; it has not picked the request up yet (it will at its next scan)")
        else:
            self.out(f"the running daemon picked up: {what}")
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

        return self._via_daemon_or_offline([ControlRequest("retry", target)], offline)

    def delete(self, queue_id: str) -> int:
        self._check_id(queue_id)
        self._require(queue_id, self.disk.layout.queue)

        def offline() -> int:
            if not self.disk.delete(queue_id):
                raise QueueToolError(EX_NOTFOUND, f"no queued message {queue_id}")
            self.out(f"deleted {queue_id}")
            return EX_OK

        return self._via_daemon_or_offline([ControlRequest("delete", queue_id)], offline)

    def requeue(self, queue_id: str) -> int:
        self._check_id(queue_id)
        self._require(queue_id, self.disk.layout.failed)

        def offline() -> int:
            self.disk.requeue(queue_id)
            self.out(f"requeued {queue_id}; the daemon delivers it when it starts")
            return EX_OK

        return self._via_daemon_or_offline([ControlRequest("requeue", queue_id)], offline)

    def hold(self, queue_id: Optional[str] = None, all_: bool = False, mailbox: Optional[str] = None) -> int:
        """Queued → held: the daemon never attempts nor expires a held message."""
        return self._hold_or_release("hold", "queued", queue_id, all_, mailbox)

    def release(self, queue_id: Optional[str] = None, all_: bool = False, mailbox: Optional[str] = None) -> int:
        """Held → queued, with its schedule and attempt count; the time held does not count."""
        return self._hold_or_release("release", "held", queue_id, all_, mailbox)

    def _hold_or_release(self, action: str, state: str, queue_id: Optional[str], all_: bool,
                         mailbox: Optional[str]) -> int:
        directory = self._directory(state)
        if queue_id:
            self._check_id(queue_id)
            self._require(queue_id, directory)
            targets = [queue_id]
        elif all_:
            targets = [ALL]
        else:
            now = self.now()
            targets = [e.queue_id for e in self._entries(state) if Filters(mailbox=mailbox).matches(e, now)]
            if not targets:
                raise QueueToolError(EX_NOTFOUND, f"no {state} message for mailbox {mailbox}")
        change = self.disk.hold if action == "hold" else self.disk.release

        def offline() -> int:
            ids = self.disk.queue_ids(directory) if targets == [ALL] and os.path.isdir(directory) else (
                [] if targets == [ALL] else targets)
            done = 0
            for qid in ids:
                try:
                    change(qid)
                except EntryMissing:
                    continue
                done += 1
            self.out(f"{action == 'hold' and 'held' or 'released'} {done} message(s)")
            return EX_OK

        return self._via_daemon_or_offline([ControlRequest(action, t) for t in targets], offline)

    def _require(self, queue_id: str, directory: str) -> None:
        if not os.path.exists(os.path.join(directory, queue_id + MSG)):
            where = {self.disk.layout.failed: "failed/", self.disk.layout.held: "held/"}.get(directory, "the queue")
            raise QueueToolError(EX_NOTFOUND, f"no message {queue_id} in {where}")


def _duration(text: str) -> float:
    try:
        return parse_duration(text, "--older-than")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.problem) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphsmtp-queue", description="Inspect and manage the graphsmtp spool.")
    parser.add_argument("--config", "-c", help="TOML configuration (default: $GRAPHSMTP_CONFIG, /etc/graphsmtp/graphsmtp.toml, built-in defaults)")
    parser.add_argument("--spool", help="spool directory (overrides the configuration)")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the running daemon to pick up a request")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("list", "queued, held and arriving messages"), ("failed", "permanently failed messages")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--json", action="store_true", help="one JSON document (fields: see README)")
        command.add_argument("--mailbox", help="only messages sent as this mailbox")
        command.add_argument("--older-than", type=_duration, metavar="DURATION", help="only messages older than this (90s, 5m, 1h, 2d)")
        command.add_argument("--reason", help="only messages whose last error contains this text")
    show = sub.add_parser("show", help="one message in detail")
    show.add_argument("queue_id")
    show.add_argument("--json", action="store_true")
    for name, help_text in (("delete", "drop a queued message"), ("requeue", "put a failed message back in the queue")):
        sub.add_parser(name, help=help_text).add_argument("queue_id")
    for name, help_text in (("hold", "put queued messages on hold"), ("release", "put held messages back in the queue")):
        command = sub.add_parser(name, help=help_text)
        group = command.add_mutually_exclusive_group(required=True)
        group.add_argument("queue_id", nargs="?")
        group.add_argument("--all", action="store_true")
        group.add_argument("--mailbox")
    retry = sub.add_parser("retry", help="make queued messages due now")
    group = retry.add_mutually_exclusive_group(required=True)
    group.add_argument("queue_id", nargs="?")
    group.add_argument("--all", action="store_true")
    sub.add_parser("flush", help="attempt every queued message now (retry --all)")
    adopt = sub.add_parser("adopt", help="take over the spool of a gateway that is gone for good")
    adopt.add_argument("directory", help="the dead gateway's spool directory (restored disk or volume)")
    summary = sub.add_parser("summary", help="qshape-like counts by mailbox or recipient domain and age")
    summary.add_argument("--by", choices=("mailbox", "domain"), default="mailbox")
    summary.add_argument("--state", choices=("queued", "held", "failed"), default="queued")
    summary.add_argument("--json", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None, out: Callable[[str], None] = print,
         clock: Callable[[], float] = time.time) -> int:
    try:
        return _run(argv, os.environ if environ is None else environ, out, clock)
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


def _run(argv: Optional[Sequence[str]], environ: Mapping[str, str], out: Callable[[str], None],
         clock: Callable[[], float]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help
        return EX_OK if e.code == 0 else EX_USAGE
    return _dispatch(_open_tool(args, environ, out, clock), args, out)


def _open_tool(args: argparse.Namespace, environ: Mapping[str, str], out: Callable[[str], None],
               clock: Callable[[], float]) -> QueueTool:
    """The tool on the configured spool; a missing spool is a configuration error, not an empty queue."""
    try:
        config = load_tool_config(args.config, args.spool, environ)
    except ConfigError as e:
        raise QueueToolError(EX_CONFIG, f"configuration error: {e}") from None
    spool_dir = config.spool.directory
    if not os.path.isdir(os.path.join(spool_dir, "queue")):
        raise QueueToolError(EX_CONFIG, f"no spool at {spool_dir} (wrong --config or --spool?)")
    return QueueTool(SpoolDisk(spool_dir), out, now=clock, wait=args.wait)


def _dispatch(tool: QueueTool, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    command = args.command
    if command in ("list", "failed"):
        filters = Filters(mailbox=args.mailbox, older_than=args.older_than, reason=args.reason)
        return (tool.list if command == "list" else tool.failed)(filters, as_json=args.json)
    if command == "show":
        return tool.show(args.queue_id, as_json=args.json)
    if command == "summary":
        return tool.summary(args.by, args.state, as_json=args.json)
    if command in ("hold", "release"):
        return (tool.hold if command == "hold" else tool.release)(args.queue_id, args.all, args.mailbox)
    if command == "delete":
        return tool.delete(args.queue_id)
    if command == "requeue":
        return tool.requeue(args.queue_id)
    if command == "adopt":
        from gateway.cli.adopt import adopt

        return adopt(tool.disk, args.directory, out)
    if command == "flush":
        return tool.retry(None)
    return tool.retry(None if args.all else args.queue_id)


if __name__ == "__main__":
    sys.exit(main())
