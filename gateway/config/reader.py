"""
A small typed reader over a TOML table that names the exact key in every error.

Each configuration section module uses it, so every bad value stops start-up with one line of
the form ``listener.submission.max_recipients: must be an integer from 1 to 10000``, and an
unknown key (usually a typo) is an error rather than silently ignored.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from typing import Any, Iterable, Mapping, Optional

from gateway.config.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "k": 1000, "K": 1024, "KB": 1000, "KiB": 1024,
    "M": 1024**2, "MB": 1000**2, "MiB": 1024**2, "G": 1024**3, "GB": 1000**3, "GiB": 1024**3,
}


class TableReader:
    """Reads values out of one TOML table, remembering which keys were used."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(where, "must be a table")
        self.table = table
        self.where = where
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def has(self, name: str) -> bool:
        return name in self.table

    @property
    def used(self) -> set[str]:
        """The names asked for so far (a copy)."""
        return set(self._used)

    def mark_used(self, *names: str) -> None:
        self._used.update(names)

    def raw(self, name: str, default: Any = None) -> Any:
        self._used.add(name)
        return self.table.get(name, default)

    def string(self, name: str, default: Optional[str] = None, choices: Optional[Iterable[str]] = None) -> Optional[str]:
        value = self.raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(self.key(name), "must be a string")
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise ConfigError(self.key(name), f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
        return value

    def word(self, name: str, default: str, choices: Optional[Iterable[str]] = None) -> str:
        """A string that always has a value (``default`` when the key is absent)."""
        value = self.string(name, default, choices)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), "must be true or false")
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: Optional[int] = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), "must be an integer")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" to {maximum}" if maximum is not None else " or more"
            raise ConfigError(self.key(name), f"must be an integer from {minimum}{upper}, not {value}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.key(name), "must be a number")
        if not math.isfinite(value):
            raise ConfigError(self.key(name), f"must be a finite number, not {value}")
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}, not {value}")
        return float(value)

    def duration(self, name: str, default: float) -> float:
        """Seconds; accepts a number or a string such as ``"90s"``, ``"5m"``, ``"5d"``."""
        value = self.raw(name, default)
        return parse_duration(value, self.key(name))

    def size(self, name: str, default: int) -> int:
        """Bytes; accepts an integer or a string such as ``"25MiB"``."""
        value = self.raw(name, default)
        return parse_size(value, self.key(name))

    def strings(self, name: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        value = self.raw(name, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "must be a list of strings")
        return tuple(value)

    def networks(self, name: str, default: Iterable[str] = ()) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        result = []
        for text in self.strings(name, default):
            try:
                result.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ConfigError(self.key(name), f"{text!r} is not an IPv4/IPv6 address or CIDR network") from None
        return tuple(result)

    def table_at(self, name: str) -> "TableReader":
        value = self.raw(name, {})
        return TableReader(value, self.key(name))

    def finish(self) -> None:
        """Refuse keys nobody asked for: they are almost always typos."""
        unknown = sorted(set(self.table) - self._used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown setting (check the spelling: the annotated reference "
                                                    f"{reference_config_path()} lists every setting)")


def reference_config_path() -> str:
    """
    Where the annotated reference configuration is on this machine: installed with the package
    (``<prefix>/share/graphsmtp/graphsmtp.toml``), else in the source tree next to ``gateway/``.
    """
    installed = os.path.join(sys.prefix, "share", "graphsmtp", "graphsmtp.toml")
    if os.path.isfile(installed):
        return installed
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "etc", "graphsmtp.toml")
    return source if os.path.isfile(source) else "etc/graphsmtp.toml (in the graphsmtp sources)"


def check_endpoint(description: str, key: str) -> None:
    """
    Refuse a server endpoint description Twisted cannot parse (unknown type, bad port,
    misspelt argument), so it is one line naming ``key`` rather than a traceback at start-up.
    Parsing binds nothing.  Problems that depend on the environment (systemd's inherited
    sockets, certificate files) are left to the moment the listener is built.
    """
    from twisted.internet.endpoints import serverFromString

    inner = description
    while inner.startswith("haproxy:"):
        inner = inner[len("haproxy:"):]
    if inner.split(":", 1)[0] == "systemd":
        # Twisted's systemd parser looks the socket up in the environment while parsing, so
        # outside systemd (graphsmtp-config check, a test run) it cannot be used to validate.
        _check_systemd_endpoint(inner, key)
        return
    try:
        serverFromString(object(), description)
    except (ValueError, TypeError) as e:
        raise ConfigError(key, f"{description!r} is not a valid Twisted endpoint: {e}") from None
    except Exception:
        pass


_SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")


def _check_systemd_endpoint(description: str, key: str) -> None:
    """
    ``systemd:domain=INET6:name=smtp`` (or ``index=N``), checked without the inherited sockets:
    the syntax, the address family and exactly one of ``name``/``index``.  Whether systemd
    really passes that socket is only known when the daemon starts under the unit.
    """
    from twisted.internet.endpoints import _parse

    try:
        args, kwargs = _parse(description)
    except Exception:
        raise ConfigError(key, f"{description!r} is not a valid Twisted endpoint") from None
    usage = "use systemd:domain=INET6:name=<FileDescriptorName> (or index=N)"
    if len(args) != 1 or set(kwargs) - {"domain", "index", "name"}:
        raise ConfigError(key, f"{description!r}: unexpected arguments; {usage}")
    if kwargs.get("domain") not in _SYSTEMD_DOMAINS:
        raise ConfigError(key, f"{description!r}: domain must be one of {', '.join(_SYSTEMD_DOMAINS)}; {usage}")
    if ("index" in kwargs) == ("name" in kwargs):
        raise ConfigError(key, f"{description!r}: give exactly one of name= and index=; {usage}")
    if "index" in kwargs and not kwargs["index"].isdigit():
        raise ConfigError(key, f"{description!r}: index must be a number; {usage}")
    if "name" in kwargs and not kwargs["name"]:
        raise ConfigError(key, f"{description!r}: name must not be empty; {usage}")


def parse_duration(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, "must be a duration such as 30, \"90s\", \"5m\" or \"5d\"")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            # TOML's nan/inf: a nan window disables a rate limit, an inf timeout breaks timers.
            raise ConfigError(key, f"must be a finite duration, not {value}")
        if value < 0:
            raise ConfigError(key, "must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and math.isfinite(float(m.group(1)) * _DURATION_UNITS[m.group(2)]):
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ConfigError(key, f"must be a duration such as 30, \"90s\", \"5m\" or \"5d\", not {value!r}")


def parse_size(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, "must be a size such as 1048576 or \"25MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, "must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ConfigError(key, f"must be a size such as 1048576 or \"25MiB\", not {value!r}")


__all__ = ["TableReader", "check_endpoint", "parse_duration", "parse_size"]
