"""
graphsmtp-sendmail's command line, read the way sendmail reads it.

Callers were written for the real sendmail (cron, mail(1), PHP's mail(), git send-email), so the
shapes they use are accepted as sendmail accepts them: a value glued to its option or in the
next argument (``-fuser@example.com``, ``-f user@example.com``), single-letter flags in clusters
(``-ti``), options and recipients in any order, ``--`` ending the options.  Options that change
queueing, tracing or DSN handling in sendmail are accepted and ignored; what the gateway cannot
honour (other ``-b`` modes, ``-q`` queue runs, unknown options) is a usage error (EX_USAGE).

Each option family is one small handler in a table, so adding an option is one line.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Optional, Sequence

import attrs

from gateway.cli.sysexits import EX_OK, EX_USAGE

USAGE = (
    "usage: graphsmtp-sendmail [-t] [-i|-oi] [-f sender] [-F full name] [--spool DIR | --config FILE]"
    " [--] [recipient ...] < message\n"
    "The message may hold no NUL octet and no line over 998 octets (RFC 5322); such input exits 65."
)


class SendmailError(Exception):
    """Why graphsmtp-sendmail stops: printed as one line, and ``status`` (sysexits) is the exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.define
class Options:
    recipients: list[str] = attrs.field(factory=list)
    extract: bool = False
    ignore_dots: bool = False
    sender: Optional[str] = None
    full_name: Optional[str] = None
    config: Optional[str] = None
    spool: Optional[str] = None
    verify: bool = False  # -bv: send a test message and wait for its outcome (gateway.cli.send_test)


class _Arguments:
    """The argument list as a stream an option can take its value from."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._args = list(argv)
        self._next = 0

    def __iter__(self) -> Iterator[str]:
        while self._next < len(self._args):
            self._next += 1
            yield self._args[self._next - 1]

    def value_for(self, option: str) -> str:
        """The next argument, as the value of ``option`` (``-f user``)."""
        if self._next >= len(self._args):
            raise SendmailError(EX_USAGE, f"option {option} needs a value")
        self._next += 1
        return self._args[self._next - 1]

    def remaining(self) -> list[str]:
        rest, self._next = self._args[self._next:], len(self._args)
        return rest


_Handler = Callable[[Options, str], None]


def _sender(opts: Options, value: str) -> None:
    opts.sender = value


def _full_name(opts: Options, value: str) -> None:
    opts.full_name = value


def _config_or_spool(opts: Options, value: str) -> None:
    """``-C``: sendmail's configuration file; a directory is taken as the spool."""
    if os.path.isfile(value) or value.endswith(".toml"):
        opts.config = value
    else:
        opts.spool = value


def _ignored(opts: Options, value: str) -> None:
    """DSN, tracing and protocol options (-N -R -V -X -B -h -L -p): nothing to do here."""


def _delivery_option(opts: Options, value: str) -> None:
    """``-oi`` is ``-i``; the delivery and error modes (-odi -odb -oem -oep ...) are ignored."""
    if value == "i":
        opts.ignore_dots = True


def _mode(opts: Options, value: str) -> None:
    """``-bm`` (or ``-b``) reads a message; ``-bv`` sends a test message; nothing else."""
    if value not in ("m", "", "v"):
        raise SendmailError(EX_USAGE, f"mode -b{value} is not supported (only -bm: read a message from standard input)")
    opts.verify |= value == "v"


def _queue_run(opts: Options, value: str) -> None:
    raise SendmailError(EX_USAGE, "queue runs (-q) are done by the daemon; use graphsmtp-queue retry --all")


def _extract(opts: Options) -> None:
    opts.extract = True


def _ignore_dots(opts: Options) -> None:
    opts.ignore_dots = True


def _no_effect(opts: Options) -> None:
    """-v -n -m -U -G -A change verbosity and queueing in sendmail: accepted and ignored."""


#: Options with a value, glued (``-fuser``) or in the next argument (``-f user``).
_WITH_VALUE: dict[str, _Handler] = {
    "f": _sender, "r": _sender, "F": _full_name, "C": _config_or_spool, "o": _delivery_option,
    **dict.fromkeys("NRVXBhLp", _ignored),
}
#: Options whose value can only be glued (``-bm``, ``-q30m``); it may be empty.
_GLUED: dict[str, _Handler] = {"b": _mode, "q": _queue_run}
#: Flags without a value; they may come in clusters (``-ti``).
_FLAGS: dict[str, Callable[[Options], None]] = {
    "t": _extract, "i": _ignore_dots, **dict.fromkeys("vnmUGA", _no_effect),
}
_LONG_WITH_VALUE = ("config", "spool")


def parse_args(argv: Sequence[str]) -> Options:
    opts = Options()
    args = _Arguments(argv)
    for arg in args:
        if arg == "--":
            opts.recipients.extend(args.remaining())
        elif arg == "--help":
            raise SendmailError(EX_OK, USAGE)
        elif arg.startswith("--"):
            _long_option(arg, args, opts)
        elif arg.startswith("-") and arg != "-":
            _short_option(arg, args, opts)
        else:
            opts.recipients.append(arg)
    return opts


def _long_option(arg: str, args: _Arguments, opts: Options) -> None:
    name, eq, value = arg[2:].partition("=")
    if name not in _LONG_WITH_VALUE:
        raise SendmailError(EX_USAGE, f"unknown option {arg} (see --help)")
    setattr(opts, name, value if eq else args.value_for(f"--{name}"))


def _short_option(arg: str, args: _Arguments, opts: Options) -> None:
    letter, glued = arg[1], arg[2:]
    if letter in _WITH_VALUE:
        _WITH_VALUE[letter](opts, glued or args.value_for(f"-{letter}"))
    elif letter in _GLUED:
        _GLUED[letter](opts, glued)
    elif all(flag in _FLAGS for flag in arg[1:]):
        for flag in arg[1:]:
            _FLAGS[flag](opts)
    else:
        raise SendmailError(EX_USAGE, f"unknown option {arg} (see --help)")


__all__ = ["USAGE", "Options", "SendmailError", "parse_args"]
