"""
Helpers for the auth tests: users files with cheap bcrypt hashes, a synchronous stand-in for a
thread pool (unit tests only; the pool is exercised for real in the integration tests), and a
fake token acquirer that plays Entra.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

import bcrypt
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from gateway.auth.entra import (
    AcquiredToken,
    EntraAppCredentials,
    InvalidAppCredentials,
    ITokenAcquirer,
)
from gateway.config.users import UserRecord, write_users

TEST_ROUNDS = 4  # bcrypt's minimum cost: fast tests; production uses 12


def cheap_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(TEST_ROUNDS)).decode("ascii")


def make_users_file(path: str, users: dict[str, tuple[str, Iterable[str]]], disabled: Iterable[str] = ()) -> str:
    """``users`` maps login → (password, allowed sender patterns)."""
    disabled = set(disabled)
    records = [UserRecord(login, cheap_hash(pw), tuple(senders), login in disabled) for login, (pw, senders) in users.items()]
    write_users(path, records)
    return path


@implementer(ITokenAcquirer)
class FakeTokenAcquirer:
    """
    Plays Entra: ``apps`` maps (tenant, client) → the valid secret.  ``down`` makes every call
    fail as if the token endpoint were unreachable; ``hold`` keeps calls pending in ``pending``.
    """

    def __init__(self, apps: dict[tuple[str, str], str], expires_in: float = 3600.0) -> None:
        self.apps = apps
        self.expires_in = expires_in
        self.calls: list[EntraAppCredentials] = []
        self.down = False
        self.hold = False
        self.pending: list[tuple[Deferred, EntraAppCredentials]] = []

    def _answer(self, credentials: EntraAppCredentials) -> Any:
        if self.down:
            raise ConnectionRefusedError("token endpoint unreachable")
        if self.apps.get((credentials.tenant_id, credentials.client_id)) != credentials.client_secret.reveal():
            raise InvalidAppCredentials("AADSTS7000215")
        return AcquiredToken(self.expires_in)

    def acquire(self, credentials: EntraAppCredentials) -> Deferred:
        self.calls.append(credentials)
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append((d, credentials))
            return d
        try:
            return succeed(self._answer(credentials))
        except Exception as e:  # noqa: BLE001
            return fail(e)

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for d, credentials in pending:
            try:
                d.callback(self._answer(credentials))
            except Exception as e:  # noqa: BLE001
                d.errback(e)


class RecordingStore:
    """An in-memory stand-in for the credential store."""

    def __init__(self, fail_with: Optional[Exception] = None) -> None:
        self.remembered: list[EntraAppCredentials] = []
        self.fail_with = fail_with

    def remember(self, credentials: EntraAppCredentials) -> Deferred:
        if self.fail_with is not None:
            return fail(self.fail_with)
        self.remembered.append(credentials)
        return succeed(None)


def private_file(path: str, data: bytes, mode: int = 0o600) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path
