"""
Typed reading of one policy's options, for built-in and third-party policies alike.

Every problem becomes a L{PolicyConfigError} that names the option, so start-up can print
``listener.submission.policies[1].messages: policy 'rate-limit': must be an integer...``.
Unknown options are errors (``finish()``): a misspelt option in a security policy silently
doing nothing is worse than refusing to start.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union

import attrs

from gateway.config.errors import ConfigError
from gateway.config.reader import TableReader
from gateway.policy.addresses import AddressPattern, client_ip, parse_patterns
from gateway.policy.interfaces import PolicyConfigError, Reject, SessionView

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
T = TypeVar("T")

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")


@attrs.frozen
class Option:
    """
    One documented option of a policy: what ``graphsmtp-config policies`` prints and
    ``docs/policies.md`` is generated from.  ``type`` is how an admin writes it in TOML
    (``"string"``, ``"integer"``, ``"duration"``, ``"list of address patterns"``...);
    ``default`` is the value used when the option is absent, as text (``None``: no default,
    the option is off or required — ``help`` says which).
    """

    name: str
    type: str
    default: Optional[str]
    help: str


def reject_options(prefix: str = "reject", text: str = "Rejected by policy", code: int = 550,
                   status: str = "5.7.1") -> tuple[Option, ...]:
    """The three options L{PolicyOptions.reject} reads: ``<prefix>_text``, ``_code``, ``_status``."""
    return (
        Option(f"{prefix}_text", "string", text, "text of the refusal (one line of printable ASCII)"),
        Option(f"{prefix}_code", "integer", str(code), "reply code of the refusal, 500 to 599"),
        Option(f"{prefix}_status", "string", status,
               "RFC 3463 enhanced status of the refusal; its class must match the code"),
    )


def scope_options() -> tuple[Option, ...]:
    """The two options L{PolicyOptions.scope} reads."""
    return (
        Option("logins", "list of strings", "[]",
               "apply only to these authenticated logins (globs; an Entra pass-through app also matches "
               "as tenant@client); unauthenticated sessions never match"),
        Option("networks", "list of CIDR networks", "[]",
               "apply only to clients in these networks (with logins: both must match)"),
    )


class PolicyOptions:
    """
    Reads values out of a policy's options table (the ``{ use = ..., ... }`` entry without
    ``use``).  Methods mirror L{gateway.config.reader.TableReader}.  ``declared`` (the policy's
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

    def patterns(self, name: str) -> tuple[AddressPattern, ...]:
        """A list of address patterns (exact address, ``*@domain``, glob)."""
        return parse_patterns(self.strings(name), name)

    def pattern_table(self, name: str) -> dict[str, tuple[AddressPattern, ...]]:
        """A table mapping a key (a login, a network) to a list of address patterns."""
        result = {}
        for key, value in self.table(name).items():
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise PolicyConfigError(f"the entry for {key!r} must be a list of address patterns", name)
            result[key] = parse_patterns(value, name)
        return result

    def reply_text(self, name: str, default: str) -> str:
        """Text for an SMTP reply line: one line of printable ASCII."""
        text = self.string(name, default)
        assert text is not None
        check_reply_text(text, name)
        return text

    def reject(self, prefix: str, default_text: str, default_code: int = 550, default_status: str = "5.7.1") -> Reject:
        """A L{Reject} from ``<prefix>_text``, ``<prefix>_code`` and ``<prefix>_status`` options."""
        text = self.reply_text(f"{prefix}_text", default_text)
        code = self.integer(f"{prefix}_code", default_code, 500, 599)
        status = self.string(f"{prefix}_status", default_status)
        check_status(status, code, f"{prefix}_status")
        return Reject(code, status, text)

    def scope(self) -> "Scope":
        """The optional ``logins`` / ``networks`` options that narrow which sessions a policy sees."""
        logins = self.strings("logins")
        for login in logins:
            if not login.strip():
                raise PolicyConfigError("must not contain empty names", "logins")
        return Scope(logins=tuple(p for login in logins for p in login_patterns(login)), networks=self.networks("networks"))

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


_PASSTHROUGH_DELIMITERS = ("@", ":", "|")


def _app_name(text: str) -> Optional[tuple[str, str]]:
    """(``<tenant>@<client>``, suffix) when ``text`` is an Entra pass-through login name."""
    from gateway.auth.passthrough import parse_passthrough_name

    name = parse_passthrough_name(text, _PASSTHROUGH_DELIMITERS)
    if name is None:
        return None
    return f"{name.tenant_id}@{name.client_id}".lower(), (name.suffix or "").lower()


def login_names(identity: Any) -> tuple[str, ...]:
    """
    The names a login is matched by, most specific first: as typed (lower-cased) and, for an
    Entra pass-through login (one with a ``credential_ref``), its app ``<tenant>@<client>``
    with and without the ``.suffix``.  The device chooses the delimiter, the GUID spelling and
    the suffix, so a rule or budget on the login text alone could be stepped out of.
    """
    login = identity.login.lower()
    app = _app_name(identity.login) if getattr(identity, "credential_ref", None) else None
    if app is None:
        return (login,)
    names = [login]
    if app[1]:
        names.append(f"{app[0]}.{app[1]}")
    names.append(app[0])
    return tuple(dict.fromkeys(names))


def login_patterns(text: str) -> tuple[str, ...]:
    """
    A configured login (or glob) as written (lower-cased) and, when it is a pass-through name,
    in the form L{login_names} produces for that app.
    """
    cleaned = text.strip().lower()
    app = _app_name(cleaned)
    if app is None:
        return (cleaned,)
    return tuple(dict.fromkeys((cleaned, f"{app[0]}.{app[1]}" if app[1] else app[0])))


def check_reply_text(text: str, option: str) -> None:
    if not text or not text.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise PolicyConfigError("must be one line of printable ASCII (it is sent as an SMTP reply)", option)
    if len(text) > 400:
        raise PolicyConfigError("must be at most 400 characters (SMTP reply lines are limited)", option)


def check_status(status: Optional[str], code: Optional[int], option: str) -> None:
    m = _STATUS.match(status or "")
    if not m:
        raise PolicyConfigError(f"{status!r} is not an RFC 3463 status such as \"5.7.1\"", option)
    if code is not None and str(code)[0] != m.group(1):
        raise PolicyConfigError(f"{status!r} does not match reply code {code} (both must be {str(code)[0]}xx)", option)


@attrs.frozen
class Scope:
    """
    Which sessions a policy applies to.  ``logins`` are globs matched case-insensitively
    against the authenticated login (an unauthenticated session never matches a login scope);
    ``networks`` contain the client address.  Both given: both must match.  Neither: everyone.
    """

    logins: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    def applies(self, session: SessionView) -> bool:
        if self.logins:
            if session.identity is None:
                return False
            names = login_names(session.identity)
            if not any(fnmatchcase(name, pattern) for name in names for pattern in self.logins):
                return False
        if self.networks:
            ip = client_ip(session.client_address)
            if ip is None or not any(ip in net for net in self.networks):
                return False
        return True


__all__ = [
    "Option", "reject_options", "scope_options", "unknown_option_problem", "PolicyOptions", "Scope", "check_reply_text", "check_status", "login_names", "login_patterns",
]
