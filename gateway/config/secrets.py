"""
Secrets in configuration: a value type that cannot leak by accident, and the ways to supply one.

A secret can be given inline (``client_secret = "..."``), from a file (``client_secret_file``,
relative names resolved against systemd's ``$CREDENTIALS_DIRECTORY`` when set) or from an
environment variable (``client_secret_env``).  A secret file that other users can read is
refused, because a relay's client secret is the keys to the tenant's mail.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Mapping, Optional

import attrs

from gateway.config.errors import ConfigError


@attrs.frozen(repr=False)
class Secret:
    """A secret string.  ``repr``/``str`` never show it; call ``reveal()`` at the point of use."""

    _value: str = attrs.field(alias="value")
    source: str = "inline"

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<Secret from {self.source}>"

    __str__ = __repr__


def read_secret_file(
    path: str, key: str, environ: Mapping[str, str] = os.environ, resolve: Optional[Callable[[str], str]] = None,
) -> Secret:
    """
    Read a secret from ``path``; refuse files readable by group or others.  A relative path
    is looked up in systemd's ``$CREDENTIALS_DIRECTORY`` when that is set, otherwise it is
    resolved like every other path in the configuration (``resolve``: relative to the file).
    """
    if not os.path.isabs(path):
        if environ.get("CREDENTIALS_DIRECTORY"):
            path = os.path.join(environ["CREDENTIALS_DIRECTORY"], path)
        elif resolve is not None:
            path = resolve(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(key, f"cannot read secret file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            key, f"secret file {path} is readable by other users; chmod 600 it"
        )
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except UnicodeDecodeError:
        # Not the decoder's message: it quotes the offending byte of the secret.
        raise ConfigError(key, f"secret file {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(key, f"cannot read secret file {path}: {e.strerror}") from None
    if not value:
        raise ConfigError(key, f"secret file {path} is empty")
    return Secret(value, source=f"file {path}")


def secret_from_table(
    table: Mapping[str, object],
    name: str,
    where: str,
    environ: Mapping[str, str] = os.environ,
    resolve: Optional[Callable[[str], str]] = None,
) -> Optional[Secret]:
    """
    Look for ``name``, ``name_file`` or ``name_env`` in ``table``; at most one may be set.
    Returns ``None`` when none is.
    """
    given = [k for k in (name, f"{name}_file", f"{name}_env") if k in table]
    if len(given) > 1:
        raise ConfigError(f"{where}.{name}", f"set only one of {', '.join(given)}")
    if not given:
        return None
    key = given[0]
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}", "must be a non-empty string")
    if key == name:
        return Secret(value)
    if key.endswith("_file"):
        return read_secret_file(value, f"{where}.{key}", environ, resolve)
    if value not in environ or not environ[value]:
        raise ConfigError(f"{where}.{key}", f"environment variable {value} is not set")
    return Secret(environ[value], source=f"environment {value}")


__all__ = ["Secret", "read_secret_file", "secret_from_table"]
