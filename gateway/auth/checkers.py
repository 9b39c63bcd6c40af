"""
The twisted.cred checker for the users file.

bcrypt is deliberately slow (tens to hundreds of milliseconds per check), so every check runs in
a dedicated ThreadPool, never on the reactor and never in the reactor's default pool (which also
serves DNS).  Unknown, disabled and over-long logins still cost one bcrypt check against a
dummy hash, so response time does not reveal which logins exist.
"""

from __future__ import annotations

from typing import Any, Optional

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from gateway.config.logins import names_of
from gateway.config.users import MAX_PASSWORD_BYTES, UsersStore
from gateway.policy.interfaces import Identity

# bcrypt("not a password", cost 12): checked against when the login is unknown.
_DUMMY_HASH = b"$2b$12$8mXPIeVembTVQYUNqBZ3/ej/pwXYkVQd6N5MqFLLauuem4ie29BcO"


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _verify(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def decode_login(username: Any) -> str:
    """AUTH user names arrive as bytes; a name that is not UTF-8 cannot be anybody's login."""
    if isinstance(username, bytes):
        try:
            return username.decode("utf-8")
        except UnicodeDecodeError:
            raise UnauthorizedLogin() from None
    return str(username)


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """Checks AUTH PLAIN/LOGIN credentials against a L{UsersStore}; the avatar id is an L{Identity}."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, store: UsersStore, reactor: Any, threadpool: Any, dummy_hash: bytes = _DUMMY_HASH) -> None:
        self.store = store
        self._dummy_hash = dummy_hash
        self._reactor = reactor
        self._threadpool = threadpool

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        try:
            login = decode_login(credentials.username)
        except UnauthorizedLogin:
            return fail(UnauthorizedLogin())
        password = _as_bytes(credentials.password)

        def check() -> Optional[Identity]:
            # In the auth thread: the users-file lookup may stat and re-read the file, and the
            # bcrypt comparison is deliberately slow; neither belongs on the reactor thread.
            record = self.store.lookup(login)
            usable = record is not None and not record.disabled and len(password) <= MAX_PASSWORD_BYTES
            hashed = record.password_hash.encode("ascii") if record is not None and usable else self._dummy_hash
            ok = _verify(password[:MAX_PASSWORD_BYTES], hashed)
            if record is None or not (ok and usable):
                return None
            return Identity(login=record.login, allowed_senders=record.allowed_senders, names=names_of(record.login, None))

        def decided(identity: Optional[Identity]) -> Identity:
            if identity is None:
                raise UnauthorizedLogin()
            return identity

        return deferToThreadPool(self._reactor, self._threadpool, check).addCallback(decided)


__all__ = ["UsersFileChecker", "decode_login"]
