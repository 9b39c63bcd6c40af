"""
Typed reading of one policy's options, for built-in and third-party policies alike.

L{PolicyOptions} is L{gateway.plugins.options.PluginOptions} (what every plugin reads: strings,
numbers, durations, networks, with errors that name the option and refusal of unknown ones)
plus what only policies read: address patterns, a refusal (L{Reject}) and a L{Scope}.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any, Optional

import attrs

from gateway.config.logins import login_patterns
from gateway.plugins.errors import PolicyConfigError
from gateway.plugins.options import IPNetwork, Option, PluginOptions, unknown_option_problem
from gateway.policy.addresses import AddressPattern, client_ip, parse_patterns
from gateway.policy.interfaces import Reject, SessionView

_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")


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


class PolicyOptions(PluginOptions):
    """
    Reads a policy's options table: everything L{PluginOptions} reads, plus address patterns,
    a refusal and a scope.
    """

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
        assert code is not None and status is not None  # both have defaults; check_status refused a bad one
        return Reject(code, status, text)

    def scope(self) -> "Scope":
        """The optional ``logins`` / ``networks`` options that narrow which sessions a policy sees."""
        logins = self.strings("logins")
        for login in logins:
            if not login.strip():
                raise PolicyConfigError("must not contain empty names", "logins")
        return Scope(logins=tuple(p for login in logins for p in login_patterns(login)), networks=self.networks("networks"))


def login_names(identity: Any) -> tuple[str, ...]:
    """
    The names a login is matched by, most specific first: the canonical names the auth checker
    computed when it accepted the login (L{gateway.config.logins.login_names}), carried by the
    identity; a policy never parses the login itself.
    """
    return tuple(identity.names)


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
    "Option", "IPNetwork", "PolicyConfigError", "reject_options", "scope_options", "unknown_option_problem", "PolicyOptions", "Scope", "check_reply_text", "check_status", "login_names", "login_patterns",
]
