"""
Where pass-through credentials live so a spooled message stays deliverable after a restart.

The decision: a message accepted from a pass-through session is spooled with
``Provenance.credential_ref = "entra:<tenant>:<client>"`` only.  The client secret itself goes
into this store, one file per app (``<directory>/<tenant>_<client>.cred``), encrypted with
AES-256-GCM under a local key (the reference is the associated data, so a file cannot be
renamed to stand in for another app).  The key lives in its own file (32 random bytes, base64,
mode 0600, created on first use), or comes from systemd's ``$CREDENTIALS_DIRECTORY``
(``LoadCredentialEncrypted=`` can seal it to the TPM).

What that buys: the spool, its backups and the credential files hold no plaintext secret, and
copying them elsewhere without the key file reveals nothing.  What it does not: someone who can
read both the key file and the store (root, or the service user) can decrypt — as they could
read the gateway's own client secret from its configuration.  Each successful login writes the
secret that just worked (a rotated secret replaces the old one); entries are not expired
automatically (see the final report's gaps).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from typing import Any, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from gateway.auth.entra import (
    EntraAppCredentials,
    ICredentialSource,
    parse_credential_ref,
)
from gateway.config.errors import ConfigError
from gateway.config.secrets import Secret
from gateway.private_files import fsync_directory, replace_private_file

KEY_BYTES = 32


class CredentialStoreError(Exception):
    """Stored credentials exist but cannot be read (wrong key file, corruption): an admin must act."""


def load_or_create_key(path: str, key_name: str) -> bytes:
    """
    Read the store key, creating it (0600, O_EXCL) when the file does not exist yet.  A key file
    other users can read is refused with its path named; so is a malformed one.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError(key_name, f"cannot create key file {path}: {e.strerror}") from None
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_directory(os.path.dirname(os.path.abspath(path)))
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(key_name, f"cannot read key file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(key_name, f"key file {path} is readable by other users; chmod 600 it")
    try:
        with open(path, "rb") as f:
            key = base64.b64decode(f.read().strip(), validate=True)
    except OSError as e:
        raise ConfigError(key_name, f"cannot read key file {path}: {e.strerror}") from None
    except (binascii.Error, ValueError):
        raise ConfigError(key_name, f"key file {path} is not a base64 key") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(key_name, f"key file {path} must hold {KEY_BYTES} bytes (base64), not {len(key)}")
    return key


@implementer(ICredentialSource)
class EncryptedCredentialStore:
    """
    ``remember()`` after a successful pass-through login; ``resolve()`` at delivery.  File I/O
    (with fsync) runs in ``threadpool``; the decrypted credentials are cached in memory.
    """

    log = Logger()

    def __init__(self, directory: str, key: bytes, reactor: Any, threadpool: Any) -> None:
        self.directory = directory
        self._aead = AESGCM(key)
        self._reactor = reactor
        self._threadpool = threadpool
        self._cache: dict[str, EntraAppCredentials] = {}

    @classmethod
    def open(cls, directory: str, key_file: str, reactor: Any, threadpool: Any, key_name: str = "auth.passthrough.key_file") -> "EncryptedCredentialStore":
        """Start-up: create the directory (0700) and load or create the key."""
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError("auth.passthrough.store_directory", f"cannot create {directory}: {e.strerror}") from None
        return cls(directory, load_or_create_key(key_file, key_name), reactor, threadpool)

    def _path(self, ref: str) -> str:
        parsed = parse_credential_ref(ref)
        if parsed is None:
            raise KeyError(ref)
        return os.path.join(self.directory, f"{parsed[0]}_{parsed[1]}.cred")

    def remember(self, credentials: EntraAppCredentials) -> Deferred:
        """Persist (if changed) the credentials that just worked; fires when they are on disk."""
        ref = credentials.credential_ref
        known = self._cache.get(ref)
        if known is not None and known.client_secret.reveal() == credentials.client_secret.reveal():
            return succeed(None)
        blob = self._encrypt(ref, credentials)
        d = deferToThreadPool(self._reactor, self._threadpool, self._write, self._path(ref), blob)

        def written(_: Any) -> None:
            self._cache[ref] = credentials
            self.log.info("pass-through credentials stored for {ref}", ref=ref)

        return d.addCallback(written)

    def resolve(self, ref: str) -> Deferred:
        """
        Fires with L{EntraAppCredentials}; fails with ``KeyError`` when nothing is stored under
        ``ref`` and L{CredentialStoreError} when something is but cannot be decrypted.
        """
        known = self._cache.get(ref)
        if known is not None:
            return succeed(known)
        try:
            path = self._path(ref)
        except KeyError:
            return fail(KeyError(ref))
        d = deferToThreadPool(self._reactor, self._threadpool, self._read, path)

        def decrypted(blob: Optional[bytes]) -> EntraAppCredentials:
            if blob is None:
                raise KeyError(ref)
            credentials = self._decrypt(ref, blob)
            self._cache[ref] = credentials
            return credentials

        return d.addCallback(decrypted)

    def _encrypt(self, ref: str, credentials: EntraAppCredentials) -> bytes:
        plaintext = json.dumps({
            "tenant_id": credentials.tenant_id,
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret.reveal(),
        }).encode("utf-8")
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, ref.encode("ascii"))
        return json.dumps({
            "version": 1,
            "ref": ref,
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "sealed": base64.b64encode(sealed).decode("ascii"),
        }).encode("ascii") + b"\n"

    def _decrypt(self, ref: str, blob: bytes) -> EntraAppCredentials:
        try:
            outer = json.loads(blob)
            plaintext = self._aead.decrypt(
                base64.b64decode(outer["nonce"]), base64.b64decode(outer["sealed"]), ref.encode("ascii"),
            )
            inner = json.loads(plaintext)
            return EntraAppCredentials(
                inner["tenant_id"], inner["client_id"], Secret(inner["client_secret"], source=f"credential store {ref}"),
            )
        except InvalidTag:
            raise CredentialStoreError(f"{ref}: stored credentials do not decrypt with this key (key file replaced?)") from None
        except (ValueError, KeyError, TypeError):
            raise CredentialStoreError(f"{ref}: stored credentials are corrupt") from None

    @staticmethod
    def _write(path: str, blob: bytes) -> None:
        replace_private_file(path, blob)

    @staticmethod
    def _read(path: str) -> Optional[bytes]:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


__all__ = ["EncryptedCredentialStore", "CredentialStoreError", "load_or_create_key", "KEY_BYTES"]
