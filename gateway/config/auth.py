"""
The ``[auth]`` section: where SMTP AUTH logins come from and how guessing is slowed down.

::

    [auth]
    users_file = "users.jsonl"        # bcrypt users, managed with graphsmtp-users
    hash_threads = 2                  # threads for bcrypt checks (never the reactor)

    [auth.passthrough]                # Entra pass-through logins (tenant@client / secret)
    enabled = false
    allowed_tenants = ["<tenant GUID>"]   # required when enabled; ["*"] = any tenant
    delimiters = ["@", ":", "|"]
    key_file = "passthrough.key"      # default <state_dir>/passthrough.key, created 0600
    store_directory = "/var/lib/graphsmtp/credentials"   # default <state_dir>/credentials
    allowed_senders = []              # empty: the app's own Exchange permissions decide
    login_host = "https://login.microsoftonline.com"     # default: from [graph], else global
    graph_url = "https://graph.microsoft.com"

    [auth.throttle]
    max_failures = 10                 # per client address (IPv6: per /64) within window
    window = "15m"
    base_delay = "1s"                 # first failure answers after 1 s, then 2 s, 4 s ...
    max_delay = "15s"

Relative ``users_file``/``store_directory`` paths are relative to the configuration file; a
relative ``key_file`` is looked up in systemd's ``$CREDENTIALS_DIRECTORY`` when that is set.
Files other users can read (users file, key file) stop start-up with their path named.
"""

from __future__ import annotations

import os
import stat
import uuid
from typing import Callable, Mapping, Optional

import attrs

from gateway.config.errors import ConfigError
from gateway.config.reader import TableReader
from gateway.config.users import UsersFileError, load_users
from gateway.mail.patterns import PatternError, SenderPattern

_DELIMITERS = ("@", ":", "|")


@attrs.frozen
class ThrottleSettings:
    """
    ``[auth.throttle]``: how failed logins are slowed down (used by L{gateway.auth.throttle}).
    Documented defaults: 10 failures per 15 minutes, delays 1 s, 2 s, 4 s … capped at 15 s.
    """

    max_failures: int = 10
    window: float = 900.0
    base_delay: float = 1.0
    max_delay: float = 15.0
    max_tracked: int = 100_000


@attrs.frozen
class PassThroughConfig:
    enabled: bool = False
    allowed_tenants: tuple[str, ...] = ()
    delimiters: tuple[str, ...] = _DELIMITERS
    key_file: Optional[str] = None
    store_directory: Optional[str] = None
    allowed_senders: tuple[str, ...] = ()
    login_host: Optional[str] = None
    graph_url: Optional[str] = None


@attrs.frozen
class AuthConfig:
    """Parsed ``[auth]``; ``None`` paths mean "the default under state_dir" (see resolved_paths)."""

    users_file: Optional[str] = None
    hash_threads: int = 2
    passthrough: PassThroughConfig = attrs.field(factory=PassThroughConfig)
    throttle: ThrottleSettings = attrs.field(factory=ThrottleSettings)

    @property
    def has_checkers(self) -> bool:
        return self.users_file is not None or self.passthrough.enabled

    def key_file(self, state_dir: str) -> str:
        return self.passthrough.key_file or os.path.join(state_dir, "passthrough.key")

    def store_directory(self, state_dir: str) -> str:
        return self.passthrough.store_directory or os.path.join(state_dir, "credentials")


def parse_auth_section(root: TableReader, environ: Mapping[str, str], resolve: Callable[[str], str]) -> AuthConfig:
    """``[auth]`` from the root table (defaults when absent)."""
    if not root.has("auth"):
        return AuthConfig()
    t = root.table_at("auth")
    users_file = t.string("users_file")
    if users_file is not None:
        users_file = resolve(users_file)
        _check_users_file(users_file, t.key("users_file"))
    hash_threads = t.integer("hash_threads", 2, 1, 32)
    passthrough = _parse_passthrough(t.table_at("passthrough"), environ, resolve) if t.has("passthrough") else PassThroughConfig()
    throttle = _parse_throttle(t.table_at("throttle")) if t.has("throttle") else ThrottleSettings()
    t.finish()
    return AuthConfig(users_file=users_file, hash_threads=hash_threads, passthrough=passthrough, throttle=throttle)


def _check_users_file(path: str, key: str) -> None:
    try:
        load_users(path)
    except UsersFileError as e:
        raise ConfigError(key, str(e)) from None


def resolve_key_file(path: str, environ: Mapping[str, str], resolve: Callable[[str], str]) -> str:
    if not os.path.isabs(path) and environ.get("CREDENTIALS_DIRECTORY"):
        return os.path.join(environ["CREDENTIALS_DIRECTORY"], path)
    return resolve(path)


def check_private_file(path: str, key: str) -> None:
    """An existing key/secret file must not be accessible to group or others."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(key, f"key file {path} is readable by other users; chmod 600 it")


def _parse_passthrough(t: TableReader, environ: Mapping[str, str], resolve: Callable[[str], str]) -> PassThroughConfig:
    enabled = t.boolean("enabled", False)
    tenants = []
    for text in t.strings("allowed_tenants"):
        if text == "*":
            tenants.append("*")
            continue
        try:
            tenants.append(str(uuid.UUID(text)))
        except ValueError:
            raise ConfigError(t.key("allowed_tenants"), f"{text!r} is not a tenant GUID (or \"*\" for any tenant)") from None
    if enabled and not tenants:
        raise ConfigError(
            t.key("allowed_tenants"),
            "is required when pass-through is enabled: list your tenant GUIDs (\"*\" lets any Entra tenant relay through this gateway)",
        )
    delimiters = t.strings("delimiters", _DELIMITERS)
    if not delimiters or any(d not in _DELIMITERS for d in delimiters):
        raise ConfigError(t.key("delimiters"), f"must be a non-empty list of {', '.join(map(repr, _DELIMITERS))}")
    key_file = t.string("key_file")
    if key_file is not None:
        key_file = resolve_key_file(key_file, environ, resolve)
        check_private_file(key_file, t.key("key_file"))
    store_directory = t.string("store_directory")
    if store_directory is not None:
        store_directory = resolve(store_directory)
    senders = []
    for text in t.strings("allowed_senders"):
        try:
            senders.append(SenderPattern.parse(text).text)
        except PatternError as e:
            raise ConfigError(t.key("allowed_senders"), str(e)) from None
    login_host = _https(t, "login_host")
    graph_url = _https(t, "graph_url")
    t.finish()
    return PassThroughConfig(
        enabled=enabled, allowed_tenants=tuple(tenants), delimiters=tuple(delimiters), key_file=key_file,
        store_directory=store_directory, allowed_senders=tuple(senders), login_host=login_host, graph_url=graph_url,
    )


def _https(t: TableReader, name: str) -> Optional[str]:
    value = t.string(name)
    if value is None:
        return None
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ConfigError(t.key(name), "must be an https:// URL")
    return value.rstrip("/")


def _parse_throttle(t: TableReader) -> ThrottleSettings:
    defaults = ThrottleSettings()
    settings = ThrottleSettings(
        max_failures=t.integer("max_failures", defaults.max_failures, 1, 10000),
        window=t.duration("window", defaults.window),
        base_delay=t.duration("base_delay", defaults.base_delay),
        max_delay=t.duration("max_delay", defaults.max_delay),
    )
    t.finish()
    if settings.window <= 0:
        raise ConfigError(t.key("window"), "must be more than 0 seconds")
    if settings.max_delay < settings.base_delay:
        raise ConfigError(t.key("max_delay"), "must not be less than base_delay")
    return settings


__all__ = ["AuthConfig", "PassThroughConfig", "ThrottleSettings", "parse_auth_section", "check_private_file"]
