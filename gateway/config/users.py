"""
The users file: logins for SMTP AUTH with bcrypt hashes and the senders each may use.

Format (JSON Lines, one user per line; blank lines and lines starting with ``#`` are ignored)::

    {"login": "scanner", "hash": "$2b$12$...", "allowed_senders": ["scanner@example.com"]}
    {"login": "crm", "hash": "$2b$12$...", "allowed_senders": ["*@crm.example.com"], "disabled": true}

- ``login``: the AUTH user name, matched exactly.
- ``hash``: a bcrypt hash (``$2b$``/``$2a$``/``$2y$``).  Anything else, in particular a plaintext
  password, makes the whole file invalid: a file that worked with a typo'd plaintext entry
  would quietly turn into a password store nobody meant to keep.
- ``allowed_senders``: sender patterns (see gateway.mail.patterns), at least one; ``["*"]``
  allows any address and has to be written out on purpose.
- ``disabled`` (optional): the login is refused without deleting it.

It lives in config/ because it is configuration read at start-up and on reload (a broken file
stops ``[auth] users_file`` from loading); auth's checkers consume it and never the other way.

JSON Lines because it is written by a tool (``graphsmtp-users``) as often as by hand, each line
stands alone (errors name the line), and the standard library reads and writes it.  The file is
replaced atomically with mode 0600; the gateway notices the change by its mtime/size/inode and
re-reads it before the next login, keeping the previous users if the new file is broken.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from typing import Iterable, Mapping, Optional

import attrs
from twisted.logger import Logger

from gateway.mail.patterns import PatternError, SenderPattern
from gateway.private_files import replace_private_file

_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_FIELDS = {"login", "hash", "allowed_senders", "disabled"}
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; longer passwords are refused, never truncated


class UsersFileError(ValueError):
    """The users file cannot be used; the message names the file (and line) and the problem."""


@attrs.frozen(repr=False)
class UserRecord:
    """One login.  ``repr`` leaves the hash out so it cannot end up in a log line."""

    login: str
    password_hash: str
    allowed_senders: tuple[str, ...]
    disabled: bool = False

    def __repr__(self) -> str:
        return f"UserRecord(login={self.login!r}, allowed_senders={self.allowed_senders!r}, disabled={self.disabled!r})"

    def to_json(self) -> str:
        data: dict = {"login": self.login, "hash": self.password_hash, "allowed_senders": list(self.allowed_senders)}
        if self.disabled:
            data["disabled"] = True
        return json.dumps(data, ensure_ascii=False)


def is_bcrypt_hash(value: str) -> bool:
    return bool(_BCRYPT.match(value))


def validate_login(login: object) -> str:
    if not isinstance(login, str) or not login or len(login) > 256:
        raise ValueError("login must be a non-empty string of at most 256 characters")
    if any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in login):
        raise ValueError(f"login {login!r} must not contain spaces or control characters")
    return login


def parse_users(text: str, path: str) -> dict[str, UserRecord]:
    """Parse the file's text; raise L{UsersFileError} naming ``path`` and the line."""

    def record(data: object, where: str) -> UserRecord:
        """One line's JSON value as a record, checked field by field."""
        if not isinstance(data, dict):
            raise UsersFileError(f"{where}: must be a JSON object")
        try:
            login = validate_login(data.get("login"))
        except ValueError as e:
            raise UsersFileError(f"{where}: {e}") from None
        if "password" in data:
            raise UsersFileError(f"{where}: login {login!r} has a plaintext \"password\"; use graphsmtp-users passwd to store a hash")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise UsersFileError(f"{where}: unknown field {unknown[0]!r}")
        hashed = data.get("hash")
        if not isinstance(hashed, str) or not is_bcrypt_hash(hashed):
            # Never echo the value: it may be somebody's password.
            raise UsersFileError(f"{where}: login {login!r}: \"hash\" is not a bcrypt hash (plaintext passwords are refused)")
        senders = data.get("allowed_senders")
        if isinstance(senders, str):
            senders = [senders]
        if not isinstance(senders, list) or not senders:
            raise UsersFileError(f"{where}: login {login!r}: \"allowed_senders\" must be a non-empty list (use [\"*\"] for any sender)")
        try:
            patterns = tuple(SenderPattern.parse(p).text for p in senders)
        except PatternError as e:
            raise UsersFileError(f"{where}: login {login!r}: allowed_senders: {e}") from None
        disabled = data.get("disabled", False)
        if not isinstance(disabled, bool):
            raise UsersFileError(f"{where}: login {login!r}: \"disabled\" must be true or false")
        return UserRecord(login, hashed, patterns, disabled)

    users: dict[str, UserRecord] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path} line {number}"
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise UsersFileError(f"{where}: not valid JSON ({e.msg})") from None
        user = record(data, where)
        if user.login in users:
            raise UsersFileError(f"{where}: login {user.login!r} appears twice")
        users[user.login] = user
    return users


def check_file_permissions(path: str) -> None:
    """Password hashes can be cracked offline: refuse a file other users may read or change."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsersFileError(f"cannot read users file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsersFileError(f"users file {path} is not a regular file")
    if st.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise UsersFileError(f"users file {path} is readable or writable by other users; chmod 600 it")


def load_users(path: str) -> dict[str, UserRecord]:
    """Read and parse the users file (permissions checked); raise L{UsersFileError}."""
    check_file_permissions(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsersFileError(f"cannot read users file {path}: {e}") from None
    return parse_users(text, path)


def serialize_users(users: Iterable[UserRecord]) -> str:
    lines = ["# graphsmtp users file: one JSON object per line; edit with graphsmtp-users"]
    lines.extend(u.to_json() for u in sorted(users, key=lambda u: u.login))
    return "\n".join(lines) + "\n"


def write_users(path: str, users: Iterable[UserRecord]) -> None:
    """
    Replace the file atomically (temp file, fsync, rename, directory fsync) with mode 0600,
    keeping the old file's owner when run as root, so the service can still read it.
    """
    data = serialize_users(users).encode("utf-8")
    owner: Optional[tuple[int, int]] = None
    try:
        st = os.stat(path)
        owner = (st.st_uid, st.st_gid)
    except FileNotFoundError:
        pass
    replace_private_file(path, data, owner)


@attrs.frozen
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


class UsersStore:
    """
    The current contents of one users file.

    ``lookup()`` first checks (one ``stat``) whether the file changed and re-reads it if so.
    A broken new version is logged and the previous users stay in effect; at start-up a broken
    file is an error (raised from the constructor as L{UsersFileError}).
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = self._current_stamp()
        self._users: Mapping[str, UserRecord] = load_users(path)
        self._failed_stamp: Optional[_Stamp] = None
        self.reloads = 0
        # Lookups run in the auth thread pool; one reload at a time.
        self._reload_lock = threading.Lock()

    def _current_stamp(self) -> Optional[_Stamp]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)

    def check_for_changes(self) -> bool:
        """Re-read the file if it changed; returns whether new users are in effect.  Never raises."""
        with self._reload_lock:
            return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        stamp = self._current_stamp()
        if stamp == self._stamp or (stamp is not None and stamp == self._failed_stamp):
            return False
        try:
            users = load_users(self.path)
        except UsersFileError as e:
            self._failed_stamp = stamp
            self.log.error("users file not reloaded, keeping the previous {count} users: {problem}", count=len(self._users), problem=str(e))
            return False
        self._users = users
        self._stamp = stamp
        self._failed_stamp = None
        self.reloads += 1
        self.log.info("users file {path} reloaded: {count} users", path=self.path, count=len(users))
        return True

    def lookup(self, login: str) -> Optional[UserRecord]:
        self.check_for_changes()
        return self._users.get(login)

    def __len__(self) -> int:
        return len(self._users)


__all__ = [
    "UserRecord", "UsersFileError", "UsersStore", "MAX_PASSWORD_BYTES",
    "parse_users", "load_users", "write_users", "serialize_users", "is_bcrypt_hash",
    "validate_login", "check_file_permissions",
]
