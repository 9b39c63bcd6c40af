"""
graphsmtp-sendmail: a sendmail-compatible command (usable as /usr/sbin/sendmail) that drops a
message into the gateway's spool for the running daemon to deliver.

It writes into the spool's ``incoming/`` directory with the same formats and the same
acceptance protocol as the daemon (L{gateway.spool.disk}: temp file, fsync, record, fsync,
renames, directory fsync), and exits 0 only once the message is durable.  The daemon imports
it into the queue at its next scan of incoming/ (every few seconds) — or at start-up if it is
not running now — so nothing is lost when the daemon is down.

Where the spool is: ``--spool DIR``; else the configuration from ``--config FILE`` (or the
``GRAPHSMTP_CONFIG`` environment variable, or /etc/graphsmtp/graphsmtp.toml when it exists),
else the daemon's defaults (./graphsmtp-data/spool).  ``-C PATH`` is accepted for sendmail
compatibility: a directory is taken as the spool, a file as the configuration.

The command must be able to write into the spool: run it as the gateway's user (or give that
user's group write access to incoming/).  Run as root, it hands its files to the spool's owner
so the daemon can read them.

Exit status follows sysexits.h: 0 accepted, 64 usage, 65 bad message or address, 73 cannot
create the spool files, 75 temporary failure (disk full, I/O error: try again), 77 permission
denied, 78 configuration error.
"""

from __future__ import annotations

import datetime
import errno
import os
import pwd
import sys
import time
from email.utils import format_datetime
from typing import BinaryIO, Optional, Sequence

import attrs

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.mail.addresses import canonical, parse_addr_spec
from gateway.mail.errors import MailRefusal
from gateway.mail.fields import split_fields
from gateway.mail.message import choose_sending_mailbox, parse_header_section
from gateway.policy.headers import format_address
from gateway.smtp.headers import HeaderCollector, header_line, missing_headers
from gateway.spool.disk import SpoolDisk, TempMessage
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.fileops import FileOps
from gateway.spool.interfaces import SpoolError
from gateway.spool.queueid import new_queue_id

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

SYSTEM_CONFIG = "/etc/graphsmtp/graphsmtp.toml"
MAX_HEADER_BYTES = 1024 * 1024
_WRITE_BATCH = 256 * 1024
# Options that take a value (as the next argument or glued: -fuser@example.com).
_WITH_VALUE = set("fFrCNRVXBhLp")
# Flags accepted and ignored (they change queueing/verbosity in real sendmail).
_IGNORED_FLAGS = set("vnmUGAi")
_USAGE = (
    "usage: graphsmtp-sendmail [-t] [-i|-oi] [-f sender] [-F full name] [--spool DIR | --config FILE]"
    " [--] [recipient ...] < message"
)


class SendmailError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.define
class Options:
    recipients: list = attrs.field(factory=list)
    extract: bool = False
    ignore_dots: bool = False
    sender: Optional[str] = None
    full_name: Optional[str] = None
    config: Optional[str] = None
    spool: Optional[str] = None


def parse_args(argv: Sequence[str]) -> Options:
    opts = Options()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.recipients.extend(args[i:])
            break
        if arg == "--help":
            raise SendmailError(EX_OK, _USAGE)
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name not in ("config", "spool"):
                raise SendmailError(EX_USAGE, f"unknown option {arg}\n{_USAGE}")
            if not eq:
                if i >= len(args):
                    raise SendmailError(EX_USAGE, f"option --{name} needs a value")
                value, i = args[i], i + 1
            setattr(opts, name, value)
            continue
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        flag, rest = arg[1], arg[2:]
        if flag in _WITH_VALUE:
            if not rest:
                if i >= len(args):
                    raise SendmailError(EX_USAGE, f"option -{flag} needs a value")
                rest, i = args[i], i + 1
            if flag in "fr":
                opts.sender = rest
            elif flag == "F":
                opts.full_name = rest
            elif flag == "C":
                if os.path.isfile(rest) or rest.endswith(".toml"):
                    opts.config = rest
                else:
                    opts.spool = rest
            continue  # -N -R -V -X -B -h -L -p: DSN and tracing options, accepted and ignored
        if flag == "o":
            if not rest:
                if i >= len(args):
                    raise SendmailError(EX_USAGE, "option -o needs a value")
                rest, i = args[i], i + 1
            if rest == "i":
                opts.ignore_dots = True
            continue  # -odi -odb -oem -oep ...: delivery and error modes, ignored
        if flag == "b":
            if rest not in ("m", ""):
                raise SendmailError(EX_USAGE, f"mode -b{rest} is not supported (only -bm: read a message from standard input)")
            continue
        if flag == "q":
            raise SendmailError(EX_USAGE, "queue runs (-q) are done by the daemon; use graphsmtp-queue retry --all")
        letters = arg[1:]
        if all(c in _IGNORED_FLAGS or c == "t" for c in letters):
            opts.extract |= "t" in letters
            opts.ignore_dots |= "i" in letters
            continue
        raise SendmailError(EX_USAGE, f"unknown option {arg}\n{_USAGE}")
    return opts


def _check_address(address: str, hostname: str, where: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address or len(address) > 254:
        raise SendmailError(EX_DATAERR, f"invalid address {address!r} in {where}")
    if "@" not in address:
        if any(c.isspace() or ord(c) < 32 or c in "<>()," for c in address):
            raise SendmailError(EX_DATAERR, f"invalid address {address!r} in {where}")
        address = f"{address}@{hostname}"  # a local name, as sendmail qualifies it
    try:
        return parse_addr_spec(address).address
    except MailRefusal:
        raise SendmailError(EX_DATAERR, f"invalid address {address!r} in {where}") from None


def _unique(addresses: list[str]) -> list[str]:
    seen, result = set(), []
    for a in addresses:
        key = canonical(a) or a.lower()
        if key not in seen:
            seen.add(key)
            result.append(a)
    return result


class LineReader:
    """
    Standard input as CRLF lines: LF, CRLF and lone CR all become CRLF; unless ``ignore_dots``
    a line holding only "." ends the message (classic sendmail).  Over-long lines are passed
    on in pieces so memory stays bounded.
    """

    def __init__(self, stream: BinaryIO, ignore_dots: bool) -> None:
        self._stream = stream
        self._ignore_dots = ignore_dots
        self._carry = b""
        self._mid_line = False
        self.ended_by_dot = False

    def __iter__(self):
        while True:
            piece = self._stream.readline(1 << 20)
            if not piece:
                if self._carry:
                    yield self._carry.replace(b"\r", b"\r\n")
                    self._carry = b""
                return
            piece = self._carry + piece
            self._carry = b""
            if piece.endswith(b"\n"):
                content = piece[:-1]
                if content.endswith(b"\r"):
                    content = content[:-1]
                if content == b"." and not self._ignore_dots and not self._mid_line:
                    self.ended_by_dot = True
                    return
                self._mid_line = False
                yield content.replace(b"\r", b"\r\n") + b"\r\n"
            else:
                if piece.endswith(b"\r"):
                    piece, self._carry = piece[:-1], b"\r"
                self._mid_line = True
                yield piece.replace(b"\r", b"\r\n")


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


def load_tool_config(config: Optional[str], spool: Optional[str], environ) -> GatewayConfig:
    """
    The configuration the command-line tools use: ``config`` (or $GRAPHSMTP_CONFIG, or
    /etc/graphsmtp/graphsmtp.toml when it exists and no spool was named) with ``spool``
    overriding the spool directory.  Raises L{ConfigError}.
    """
    config_path = config or environ.get("GRAPHSMTP_CONFIG") or (
        SYSTEM_CONFIG if not spool and os.path.exists(SYSTEM_CONFIG) else None)
    return load_config(config_path, {"spool": spool} if spool else {}, environ)


def _spool_and_settings(opts: Options, environ) -> tuple[str, str, bool, bool, int, str]:
    try:
        config = load_tool_config(opts.config, opts.spool, environ)
    except ConfigError as e:
        raise SendmailError(EX_CONFIG, f"configuration error: {e}") from None
    max_size = min((listener.limits.max_message_size for listener in config.listeners), default=35_000_000)
    send_as = config.graph.send_as if config.graph is not None else "header-from"
    return config.spool.directory, config.hostname, config.add_message_id, config.add_date, max_size, send_as


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


def submit(opts: Options, stdin: BinaryIO, environ=os.environ, now: Optional[float] = None) -> str:
    """Read the message from ``stdin`` and queue it durably; returns the queue id."""
    spool_dir, hostname, add_message_id, add_date, max_size, send_as = _spool_and_settings(opts, environ)
    user, gecos = _user()
    now = time.time() if now is None else now
    sender = "" if opts.sender in ("<>", "") else _check_address(opts.sender or user, hostname, "-f")
    recipients = [_check_address(r, hostname, "the argument list") for r in opts.recipients]

    lines = LineReader(stdin, opts.ignore_dots)
    collector = HeaderCollector(limit=MAX_HEADER_BYTES)
    result = None
    iterator = iter(lines)
    first = True
    for line in iterator:
        if first and line.startswith(b"From "):
            first = False
            continue  # an mbox "From " separator line, as mail(1) may pass on
        first = False
        result = collector.feed(line)
        if result is not None:
            break
        if collector.overflowed:
            raise SendmailError(EX_DATAERR, f"header section larger than {MAX_HEADER_BYTES} bytes")
    if result is None:
        # The input ended inside the header section.  Its last line may lack a newline (printf
        # without \n): end that line, or the collector would drop it as unfinished.
        result = collector.feed(b"\r\n") or collector.finish_at_end()
    header_lines, body_start = result

    # The one mail grammar judges the input as the SMTP intake would (issue 8): what it
    # refuses is a data error here, and -t reads recipients from its reading.
    try:
        judged = parse_header_section(header_lines, first_body_line=collector.stopped_at)
    except MailRefusal as e:
        raise SendmailError(EX_DATAERR, f"message refused: {e.text}") from None
    fields = [(f.name.lower(), f.raw) for f in split_fields(header_lines)]
    if opts.extract:
        for name in ("to", "cc", "bcc"):
            for mailbox in judged.mailboxes(name):
                recipients.append(_check_address(mailbox.address, hostname, "the To/Cc/Bcc headers"))
        fields = [(name, raw) for name, raw in fields if name != b"bcc"]
    recipients = _unique(recipients)
    if not recipients:
        raise SendmailError(EX_USAGE, "no recipients: name them as arguments or use -t")

    queue_id = new_queue_id(now)
    names = {name for name, _ in fields}
    date = format_datetime(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    prefix = (f"Received: by {hostname} (graphsmtp-sendmail, from userid {os.getuid()})\r\n"
              f"\tid {queue_id}; {date}\r\n").encode("ascii")
    if b"from" not in names:
        display = opts.full_name if opts.full_name is not None else gecos
        address = sender or f"{user}@{hostname}"
        # Quoted or encoded as needed: -F "Doe, John" must stay one display name.
        prefix += header_line("From", format_address(display or "", address))
    prefix += missing_headers(names, hostname, queue_id, now, add_message_id, add_date)
    header_section = prefix + b"".join(raw for _, raw in fields) + b"\r\n"
    try:
        final = parse_header_section(header_section)
    except MailRefusal as e:
        raise SendmailError(EX_DATAERR, f"message refused: {e.text}") from None
    sending_mailbox = choose_sending_mailbox(final, sender, send_as)

    try:
        spool_stat = os.stat(spool_dir) if os.path.isdir(spool_dir) else None
        ops = (_OwnerFileOps(spool_stat.st_uid, spool_stat.st_gid)
               if os.geteuid() == 0 and spool_stat is not None and spool_stat.st_uid != 0 else None)
        disk = SpoolDisk(spool_dir, ops)
        disk.ensure_directories()
        temp = disk.create_temp(queue_id, incoming=True)
    except (OSError, SpoolError) as e:
        raise _spool_failure(e, spool_dir, creating=True) from None
    try:
        _write_message(disk, temp, header_section, body_start, iterator, max_size)
        entry = SpoolEntry(
            queue_id=queue_id, envelope=Envelope(sender, tuple(recipients)),
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
                   rest, max_size: int) -> None:
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


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[BinaryIO] = None, environ=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
        submit(opts, stdin or sys.stdin.buffer, os.environ if environ is None else environ)
    except SendmailError as e:
        stream = sys.stdout if e.status == EX_OK else sys.stderr
        print(("" if e.status == EX_OK else "graphsmtp-sendmail: ") + str(e), file=stream)
        return e.status
    except KeyboardInterrupt:
        print("graphsmtp-sendmail: interrupted; message not accepted", file=sys.stderr)
        return EX_TEMPFAIL
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
