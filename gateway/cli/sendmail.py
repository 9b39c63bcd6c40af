"""
graphsmtp-sendmail: a sendmail-compatible command (usable as /usr/sbin/sendmail) for every
local user.

Two ways in, both exiting 0 only once the message is durable in the spool:

- Through the daemon (L{gateway.cli.local_submit}), when the configuration has a ``[local]``
  socket: SMTP over that UNIX socket.  The daemon identifies the user by the socket's peer
  credentials and applies the per-user allowed senders and the ``[local]`` policy chain as on
  any listener; a refusal exits 77 (EX_NOPERM, 5.7.x) or 65 (EX_DATAERR) with the reason.
- The drop-off directory: the spool's ``incoming/`` with the same formats and acceptance
  protocol as the daemon (L{gateway.spool.disk}: temp file, fsync, record, fsync, renames,
  directory fsync).  The daemon imports it at once (inotify) or at start-up, so nothing is lost
  when it is down.  Used without a ``[local]`` socket, or when the daemon is down — then only by
  the gateway's own user (the spool's owner) or root; anyone else gets 75 and tries later.

Where the spool is: the configuration is found the way the daemon finds it
(L{gateway.config.locate}: ``--config FILE``, else ``$GRAPHSMTP_CONFIG``, else
/etc/graphsmtp/graphsmtp.toml); ``--spool DIR`` overrides its spool directory.  ``-C PATH`` is
accepted for sendmail compatibility: a directory is taken as the spool, a file as the
configuration.  With no configuration at all, or a spool no daemon has ever set up (no
``lock`` file, no ``incoming/``), the command exits 78 (EX_CONFIG) with one line and writes
nothing: queueing into a directory nobody reads would strand the mail while reporting success.

Exit status follows sysexits.h, with one line on standard error: 0 accepted, 64 usage, 65 bad
message or address (or refused by the daemon; a NUL octet or a line over 998 octets is refused
on both paths, as the SMTP intake refuses it: L{gateway.cli.sendmail_input}), 70 internal error, 73 cannot create the spool
files, 75 temporary failure (disk full, daemon down, 4xx: try again), 77 permission denied
(refused by a 5.7.x policy or sender check), 78 configuration error.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import os
import pwd
import sys
import time
from email.utils import format_datetime
from typing import BinaryIO, Iterable, Mapping, Optional, Sequence

import attrs

from gateway.cli import local_submit
from gateway.cli.sendmail_args import Options, SendmailError, parse_args
from gateway.cli.sendmail_input import Message, read_message
from gateway.cli.sysexits import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOPERM,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
)
from gateway.cli.tool_config import load_submission_config
from gateway.config import ConfigError
from gateway.config.locate import SYSTEM_CONFIG
from gateway.mail.errors import MailRefusal
from gateway.mail.message import choose_sending_mailbox, parse_header_section
from gateway.policy.headers import format_address
from gateway.smtp.headers import header_line, missing_headers
from gateway.spool.disk import SpoolDisk, TempMessage
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.interfaces import SpoolError
from gateway.spool.queueid import new_queue_id

_WRITE_BATCH = 256 * 1024


class _OwnerFileOps(FileOps):
    """Run as root: hand each new file to the spool's owner so the daemon can read it."""

    def __init__(self, uid: int, gid: int) -> None:
        self._uid, self._gid = uid, gid

    def open_new(self, path: str) -> int:
        fd = super().open_new(path)
        os.fchown(fd, self._uid, self._gid)
        return fd


def _user() -> tuple[str, str]:
    try:
        pw = pwd.getpwuid(os.getuid())
        return pw.pw_name, (pw.pw_gecos or "").split(",")[0]
    except KeyError:
        return str(os.getuid()), ""


def daemon_spool_problem(spool_dir: str) -> Optional[str]:
    """
    Why ``spool_dir`` is not a spool a daemon reads, or None when it is.  A daemon that ever
    started on it left its ``lock`` file and ``incoming/`` directory; without them nothing
    would ever import what is dropped there.
    """
    root = os.path.abspath(spool_dir)
    try:
        present = os.path.isdir(os.path.join(root, "incoming")) and os.path.exists(os.path.join(root, "lock"))
    except OSError:
        present = False
    if present:
        return None
    if os.path.isdir(root) and not os.access(root, os.X_OK):
        return None  # not ours to inspect: writing into it reports the permission problem
    return (f"{root} is not the spool of a graphsmtp daemon (start the daemon once, or point "
            "--config/GRAPHSMTP_CONFIG at its configuration)")


@attrs.frozen
class Settings:
    """What the command needs from the gateway's configuration."""

    spool_dir: str
    hostname: str
    add_message_id: bool
    add_date: bool
    max_size: int
    socket: Optional[str] = None
    send_as: str = "header-from"


def _settings(opts: Options, environ: Mapping[str, str], system_config: str = SYSTEM_CONFIG) -> Settings:
    try:
        config = load_submission_config(opts.config, opts.spool, environ, system_config)
    except ConfigError as e:
        raise SendmailError(EX_CONFIG, f"configuration error: {e}") from None
    local = config.local
    listeners = list(config.listeners) + ([local.listener()] if local is not None and local.socket else [])
    max_size = min((listener.limits.max_message_size for listener in listeners), default=35_000_000)
    send_as = config.graph.send_as if config.graph is not None else "header-from"
    return Settings(config.spool.directory, config.hostname, config.add_message_id, config.add_date, max_size,
                    local.socket if local is not None else None, send_as)


def _spool_failure(e: BaseException, spool_dir: str, creating: bool = False) -> SendmailError:
    """Exit status for a spool problem: permission, full disk, cannot create, or transient I/O."""
    err = getattr(e, "errno", None)
    if isinstance(e, PermissionError) or err in (errno.EPERM, errno.EACCES):
        return SendmailError(EX_NOPERM, f"permission denied writing to spool {spool_dir} "
                                        "(run as the gateway's user)")
    if isinstance(e, SpoolError) and e.out_of_space:
        return SendmailError(EX_TEMPFAIL, f"spool {spool_dir} is out of space; message not accepted, try again later")
    if creating:
        return SendmailError(EX_CANTCREAT, f"cannot create files in spool {spool_dir}: {e}")
    return SendmailError(EX_TEMPFAIL, f"{e}; message not accepted, try again later")


def submit(opts: Options, stdin: BinaryIO, environ: Mapping[str, str] = os.environ, now: Optional[float] = None,
           system_config: str = SYSTEM_CONFIG) -> str:
    """
    Read the message from ``stdin`` and hand it over durably; returns the queue id.  Through
    the daemon's ``[local]`` socket when configured (the daemon judges it as it would an SMTP
    client); else — or when the daemon is down and we are the gateway's own user — into the
    spool's drop-off directory.
    """
    settings = _settings(opts, environ, system_config)
    user, gecos = _user()
    now = time.time() if now is None else now
    message = read_message(opts, stdin, settings.hostname, user)
    from_field = _from_field(message, opts, settings.hostname, user, gecos)
    if settings.socket:
        try:
            return submit_to_daemon(settings.socket, message, from_field)
        except local_submit.NotRunning as e:
            if not may_drop_off(settings.spool_dir):
                raise SendmailError(EX_TEMPFAIL, f"the graphsmtp daemon is not running ({e}); message not "
                                                 "accepted, try again later") from None
    return drop_off(settings, message, from_field, user, now)


def _from_field(message: Message, opts: Options, hostname: str, user: str, gecos: str) -> bytes:
    """A From field naming the user (``-F`` or the passwd name), when the message has none."""
    if b"from" in message.names:
        return b""
    display = opts.full_name if opts.full_name is not None else gecos
    address = message.sender or f"{user}@{hostname}"
    # Quoted or encoded as needed: -F "Doe, John" must stay one display name.
    return header_line("From", format_address(display or "", address))


def may_drop_off(spool_dir: str) -> bool:
    """
    Whether this process may use the drop-off directory when the daemon is down: only the
    gateway's own user (the spool's owner) or root.  Anyone else's mail must go through the
    daemon, which identifies them and applies the ``[local]`` chain.
    """
    try:
        return os.geteuid() == 0 or os.stat(spool_dir).st_uid == os.geteuid()
    except OSError:
        return False


def submit_to_daemon(socket: str, message: Message, from_field: bytes) -> str:
    """Over the ``[local]`` socket: 0 only after the daemon's 250 (spool commit)."""
    header_section = from_field + b"".join(raw for _, raw in message.fields) + b"\r\n"
    try:
        client = local_submit.connect(socket, "localhost")
        reply = local_submit.send(client, message.sender, message.recipients,
                                  itertools.chain((header_section, message.body_start), message.rest))
    except local_submit.Refused as e:
        raise SendmailError(e.status, f"message not accepted: {e}") from None
    return local_submit.queue_id_of(reply) or ""


def drop_off(settings: Settings, message: Message, from_field: bytes, user: str, now: float) -> str:
    """Into the spool's incoming/ directory, for the daemon to import (it need not run now)."""
    spool_dir = settings.spool_dir
    problem = daemon_spool_problem(spool_dir)
    if problem is not None:
        raise SendmailError(EX_CONFIG, f"message not accepted: {problem}")
    queue_id = new_queue_id(now)
    date = format_datetime(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    prefix = (f"Received: by {settings.hostname} (graphsmtp-sendmail, from userid {os.getuid()})\r\n"
              f"\tid {queue_id}; {date}\r\n").encode("ascii") + from_field
    prefix += missing_headers(message.names, settings.hostname, queue_id, now, settings.add_message_id, settings.add_date)
    header_section = prefix + b"".join(raw for _, raw in message.fields) + b"\r\n"
    # Decided once, as the SMTP intake does, and recorded: the deliverer sends as this mailbox.
    try:
        final = parse_header_section(header_section)
    except MailRefusal as e:
        raise SendmailError(EX_DATAERR, f"message refused: {e.text}") from None
    sending_mailbox = choose_sending_mailbox(final, message.sender, settings.send_as)

    try:
        spool_stat = os.stat(spool_dir) if os.path.isdir(spool_dir) else None
        ops = (_OwnerFileOps(spool_stat.st_uid, spool_stat.st_gid)
               if os.geteuid() == 0 and spool_stat is not None and spool_stat.st_uid != 0 else None)
        disk = SpoolDisk(spool_dir, ops)
        temp = disk.create_temp(queue_id, incoming=True)
    except (OSError, SpoolError) as e:
        raise _spool_failure(e, spool_dir, creating=True) from None
    try:
        _write_message(disk, temp, header_section, message.body_start, message.rest, settings.max_size)
        entry = SpoolEntry(
            queue_id=queue_id, envelope=Envelope(message.sender, tuple(message.recipients)),
            provenance=Provenance(client_address="127.0.0.1", client_name="localhost", listener="sendmail",
                                  auth_identity=user),
            received_at=now, message_path="", size=temp.size, sending_mailbox=sending_mailbox,
        )
        disk.publish(temp, entry, incoming=True)
    except SendmailError:
        disk.discard(temp)
        raise
    except (OSError, SpoolError) as e:
        disk.discard(temp)
        raise _spool_failure(e, spool_dir) from None
    return queue_id


def _write_message(disk: SpoolDisk, temp: TempMessage, header_section: bytes, body_start: bytes,
                   rest: Iterable[bytes], max_size: int) -> None:
    batch = [header_section, body_start]
    batched = len(header_section) + len(body_start)
    total = batched
    last = body_start or b"\r\n"
    for line in rest:
        batch.append(line)
        batched += len(line)
        total += len(line)
        last = line
        if total > max_size:
            raise SendmailError(EX_DATAERR, f"message larger than the gateway's limit of {max_size} bytes")
        if batched >= _WRITE_BATCH:
            disk.append(temp, batch)
            batch, batched = [], 0
    if not last.endswith(b"\r\n"):
        batch.append(b"\r\n")
    disk.append(temp, batch)


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[BinaryIO] = None,
         environ: Optional[Mapping[str, str]] = None, system_config: str = SYSTEM_CONFIG) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
        if opts.verify:
            from gateway.cli.send_test import run as send_test

            return send_test(opts.sender, (opts.recipients or [""])[0], opts.config, opts.spool, out=sys.stdout,
                             environ=os.environ if environ is None else environ)
        submit(opts, stdin or sys.stdin.buffer, os.environ if environ is None else environ,
               system_config=system_config)
    except SendmailError as e:
        stream = sys.stdout if e.status == EX_OK else sys.stderr
        print(("" if e.status == EX_OK else "graphsmtp-sendmail: ") + str(e), file=stream)
        return e.status
    except KeyboardInterrupt:
        print("graphsmtp-sendmail: interrupted; message not accepted", file=sys.stderr)
        return EX_TEMPFAIL
    except Exception as e:  # a bug: still one line and a sysexits status, never a traceback
        text = " ".join(f"{type(e).__name__}: {e}".split())
        print(f"graphsmtp-sendmail: internal error ({text}); message not accepted", file=sys.stderr)
        return EX_SOFTWARE
    return EX_OK


__all__ = [
    "EX_OK", "EX_USAGE", "EX_DATAERR", "EX_SOFTWARE", "EX_CANTCREAT", "EX_TEMPFAIL", "EX_NOPERM", "EX_CONFIG",
    "Options", "SendmailError", "parse_args", "Settings", "submit", "drop_off", "submit_to_daemon", "main",
]


if __name__ == "__main__":
    sys.exit(main())
