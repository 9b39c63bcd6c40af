"""
Typed reading of one plugin's options, for policies and observers, built-in and third-party.

Every problem becomes a L{PolicyConfigError} that names the option, so start-up can print
``listener.submission.policies[1].messages: policy 'rate-limit': must be an integer...``.
Unknown options are errors (``finish()``): a misspelt option in a security policy silently
doing nothing is worse than refusing to start.  What only policies read (address patterns, a
refusal, a scope) is added by L{gateway.policy.options.PolicyOptions}.
"""

from __future__ import annotations

import difflib
import ipaddress
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union

import attrs

from gateway.config.errors import ConfigError
from gateway.config.reader import TableReader
from gateway.plugins.errors import PolicyConfigError

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
T = TypeVar("T")


@attrs.frozen
class Option:
    """
    One documented option of a plugin: what ``graphsmtp-config policies`` prints and
    ``docs/policies.md`` is generated from.  ``type`` is how an admin writes it in TOML
    (``"string"``, ``"integer"``, ``"duration"``, ``"list of address patterns"``...);
    ``default`` is the value used when the option is absent, as text (``None``: no default,
    the option is off or required — ``help`` says which).
    """

    name: str
    type: str
    default: Optional[str]
    help: str


class PluginOptions:
    """
    Reads values out of a plugin's options table (the ``{ use = ..., ... }`` entry without
    ``use``).  Methods mirror L{gateway.config.reader.TableReader}.  ``declared`` (the plugin's
    L{Option} list, optional) adds its names to the suggestions offered for a misspelt option.
    """

    def __init__(self, options: Mapping[str, Any], declared: Iterable[Option] = ()) -> None:
        if not isinstance(options, Mapping):
            raise PolicyConfigError("options must be a table")
        self._reader = TableReader(options, "")
        self._declared = tuple(option.name for option in declared)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except ConfigError as e:
            raise PolicyConfigError(e.problem, e.key) from None

    def has(self, name: str) -> bool:
        return self._reader.has(name)

    def raw(self, name: str, default: Any = None) -> Any:
        return self._reader.raw(name, default)

    def string(self, name: str, default: Optional[str] = None, choices: Optional[Iterable[str]] = None) -> Optional[str]:
        return self._read(self._reader.string, name, default, choices)

    def boolean(self, name: str, default: bool) -> bool:
        return self._read(self._reader.boolean, name, default)

    def integer(self, name: str, default: Optional[int], minimum: int = 0, maximum: Optional[int] = None) -> Optional[int]:
        if default is None and not self._reader.has(name):
            self._reader.mark_used(name)
            return None
        return self._read(self._reader.integer, name, default, minimum, maximum)

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        return self._read(self._reader.number, name, default, minimum)

    def duration(self, name: str, default: float) -> float:
        return self._read(self._reader.duration, name, default)

    def size(self, name: str, default: Optional[int]) -> Optional[int]:
        if default is None and not self._reader.has(name):
            self._reader.mark_used(name)
            return None
        return self._read(self._reader.size, name, default)

    def strings(self, name: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        return self._read(self._reader.strings, name, default)

    def networks(self, name: str) -> tuple[IPNetwork, ...]:
        return self._read(self._reader.networks, name)

    def table(self, name: str) -> Mapping[str, Any]:
        value = self._reader.raw(name, {})
        if not isinstance(value, Mapping):
            raise PolicyConfigError("must be a table such as { \"key\" = [...] }", name)
        return value

    def finish(self) -> None:
        """Refuse options nobody asked for: almost always a typo, so name the nearest valid one."""
        unknown = sorted(set(self._reader.table) - self._reader.used)
        if not unknown:
            return
        valid = sorted(set(self._declared) | self._reader.used)
        raise PolicyConfigError(unknown_option_problem(unknown[0], valid), unknown[0])


def unknown_option_problem(name: str, valid: Iterable[str]) -> str:
    """``unknown option; did you mean 'messages'? (valid: ...)`` for a misspelt ``name``."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listing = ", ".join(valid) if valid else "none"
    return f"unknown option; {hint}(valid options: {listing})"


__all__ = ["IPNetwork", "Option", "PluginOptions", "unknown_option_problem"]
