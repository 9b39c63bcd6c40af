"""
``graphsmtp-users``: manage the SMTP AUTH users file (see gateway.config.users for the format).

    graphsmtp-users --file users.jsonl add scanner --sender scanner@corp.example
    graphsmtp-users --file users.jsonl add app --sender '*@app.corp.example' --password-stdin < pw
    graphsmtp-users --file users.jsonl passwd scanner
    graphsmtp-users --file users.jsonl set-senders scanner scanner@corp.example '*@alerts.corp.example'
    graphsmtp-users --file users.jsonl disable scanner | enable scanner | remove scanner | list

``--config graphsmtp.toml`` reads the path from ``[auth] users_file`` instead of ``--file``.
Passwords are read twice from the terminal (never from the command line, where ``ps`` would
show them) or once from stdin with ``--password-stdin``.  The file is rewritten atomically with
mode 0600; a running gateway picks the change up at the next login.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Callable, Optional, Sequence, TextIO

import bcrypt

from gateway.auth.patterns import PatternError, validate_pattern
from gateway.cli.sysexits import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOUSER,
    EX_SOFTWARE,
    EX_USAGE,
    SysexitsArgumentParser,
)
from gateway.config.users import (
    MAX_PASSWORD_BYTES,
    UserRecord,
    UsersFileError,
    load_users,
    validate_login,
    write_users,
)

DEFAULT_ROUNDS = 12
MIN_PASSWORD_LENGTH = 12


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit ``status`` (sysexits)."""

    def __init__(self, message: str, status: int = EX_USAGE) -> None:
        super().__init__(message)
        self.status = status


def _parser() -> argparse.ArgumentParser:
    p = SysexitsArgumentParser(prog="graphsmtp-users", description="Manage graphsmtp's SMTP AUTH users file.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", "-f", help="the users file (JSON Lines)")
    where.add_argument("--config", "-c", help="a graphsmtp.toml whose [auth] users_file to use")
    sub = p.add_subparsers(dest="command", required=True)

    add = sub.add_parser("add", help="add a login")
    add.add_argument("login")
    add.add_argument("--sender", "-s", action="append", default=[], metavar="PATTERN",
                     help="allowed envelope/header sender: address, *@domain or glob (repeatable); '*' for any")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (one line)")
    add.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"bcrypt cost (default {DEFAULT_ROUNDS})")
    add.add_argument("--disabled", action="store_true", help="add the login disabled")

    pw = sub.add_parser("passwd", help="set a login's password")
    pw.add_argument("login")
    pw.add_argument("--password-stdin", action="store_true")
    pw.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)

    senders = sub.add_parser("set-senders", help="replace a login's allowed senders")
    senders.add_argument("login")
    senders.add_argument("patterns", nargs="+", metavar="PATTERN")

    for name, text in (("remove", "delete a login"), ("disable", "refuse a login without deleting it"), ("enable", "allow a disabled login again")):
        s = sub.add_parser(name, help=text)
        s.add_argument("login")

    sub.add_parser("list", help="show logins and their allowed senders (never hashes)")
    return p


def _users_path(args: argparse.Namespace) -> str:
    if args.file:
        return os.path.abspath(args.file)
    # Only [auth] users_file is read: the rest of the configuration (Graph secrets this user may
    # not be able to read, a users file that does not exist yet) is none of this tool's business.
    from gateway.config.errors import ConfigError
    from gateway.config.loader import load_toml
    try:
        data = load_toml(args.config)
    except ConfigError as e:
        raise CommandError(str(e), EX_CONFIG) from None
    auth = data.get("auth")
    path = auth.get("users_file") if isinstance(auth, dict) else None
    if not isinstance(path, str) or not path:
        raise CommandError(f"{args.config} has no [auth] users_file", EX_CONFIG)
    base = os.path.dirname(os.path.abspath(args.config))
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _load(path: str, must_exist: bool = True) -> dict[str, UserRecord]:
    if not os.path.exists(path):
        if not must_exist:
            return {}
        raise CommandError(f"users file {path} does not exist (graphsmtp-users add creates it)", EX_NOINPUT)
    try:
        return load_users(path)
    except UsersFileError as e:
        raise CommandError(str(e), EX_DATAERR) from None


def _patterns(values: Sequence[str]) -> tuple[str, ...]:
    if not values:
        raise CommandError("give at least one --sender PATTERN (use --sender '*' to allow any sender on purpose)")
    try:
        return tuple(validate_pattern(v) for v in values)
    except PatternError as e:
        raise CommandError(f"sender pattern: {e}") from None


def _read_password(from_stdin: bool, stdin: TextIO, prompt: Callable[[str], str]) -> str:
    if from_stdin:
        try:
            password = stdin.readline().rstrip("\r\n")
        except UnicodeDecodeError:
            # Not the decoder's message: it would quote bytes of the password.
            raise CommandError("the password on stdin is not valid text in this locale's encoding", EX_DATAERR) from None
    else:
        try:
            password = prompt("Password: ")
            again = prompt("Password again: ")
        except EOFError:
            raise CommandError("no password was typed (to pipe one in, use --password-stdin)") from None
        if again != password:
            raise CommandError("the passwords do not match", EX_DATAERR)
    if not password:
        raise CommandError("empty password", EX_DATAERR)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CommandError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters", EX_DATAERR)
    if len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD_BYTES:
        raise CommandError(f"password too long: bcrypt uses at most {MAX_PASSWORD_BYTES} bytes", EX_DATAERR)
    return password


def _hash(password: str, rounds: int) -> str:
    if not 4 <= rounds <= 31:
        raise CommandError("--rounds must be from 4 to 31")
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


def _require(users: dict[str, UserRecord], login: str) -> UserRecord:
    if login not in users:
        raise CommandError(f"no login {login!r}", EX_NOUSER)
    return users[login]


def run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, prompt: Callable[[str], str]) -> None:
    path = _users_path(args)
    if args.command == "list":
        users = _load(path, must_exist=False)
        for user in sorted(users.values(), key=lambda u: u.login):
            state = "  (disabled)" if user.disabled else ""
            stdout.write(f"{user.login}\t{', '.join(user.allowed_senders)}{state}\n")
        return

    users = _load(path, must_exist=args.command != "add")
    login = args.login
    try:
        validate_login(login)
    except ValueError as e:
        raise CommandError(str(e), EX_DATAERR) from None

    if args.command == "add":
        if login in users:
            raise CommandError(f"login {login!r} exists already (use passwd or set-senders)", EX_DATAERR)
        senders = _patterns(args.sender)
        password = _read_password(args.password_stdin, stdin, prompt)
        users[login] = UserRecord(login, _hash(password, args.rounds), senders, args.disabled)
        message = f"added {login}"
    elif args.command == "passwd":
        user = _require(users, login)
        password = _read_password(args.password_stdin, stdin, prompt)
        users[login] = UserRecord(login, _hash(password, args.rounds), user.allowed_senders, user.disabled)
        message = f"password of {login} changed"
    elif args.command == "set-senders":
        user = _require(users, login)
        users[login] = UserRecord(login, user.password_hash, _patterns(args.patterns), user.disabled)
        message = f"senders of {login}: {', '.join(users[login].allowed_senders)}"
    elif args.command in ("disable", "enable"):
        user = _require(users, login)
        users[login] = UserRecord(login, user.password_hash, user.allowed_senders, args.command == "disable")
        message = f"{login} {args.command}d"
    else:  # remove
        _require(users, login)
        del users[login]
        message = f"removed {login}"
    try:
        write_users(path, users.values())
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror}", EX_CANTCREAT) from None
    stdout.write(message + "\n")


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None, prompt: Optional[Callable[[str], str]] = None) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse_args(argv)
    if prompt is None:
        prompt = _terminal_prompt(stdin)
    try:
        run(args, stdin, stdout, prompt)
    except CommandError as e:
        stderr.write(f"graphsmtp-users: {e}\n")
        return e.status
    except KeyboardInterrupt:
        stderr.write("graphsmtp-users: interrupted, nothing changed\n")
        return EX_USAGE
    except Exception as e:  # a bug: still one line, and never the text (it could hold a password)
        stderr.write(f"graphsmtp-users: internal error ({type(e).__name__}); nothing changed\n")
        return EX_SOFTWARE
    return 0


def _terminal_prompt(stdin: TextIO) -> Callable[[str], str]:
    """
    Passwords are typed on the terminal.  getpass falls back to reading stdin when there is no
    terminal, and then meets the end of a piped password at "Password again:" — so a password
    arriving on a pipe without --password-stdin is refused up front, with the fix in the message.
    """

    def prompt(text: str) -> str:
        if not _is_terminal(stdin):
            raise CommandError("stdin is not a terminal: to pipe the password in, add --password-stdin")
        return getpass.getpass(text)

    return prompt


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
