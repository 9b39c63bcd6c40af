"""
How SMTP AUTH logins are named: the grammar of Entra pass-through login names and the canonical
names a login is matched by.

A pass-through login is ``<tenant GUID><delimiter><client GUID>[.<suffix>]``, and the device
chooses the delimiter (``@``, ``:``, ``|``), the GUID spelling (any case, or base64url) and the
suffix.  A rule, a scope or a budget keyed on the text as typed could be stepped out of by
spelling it differently, so every login is also known by its app, ``<tenant>@<client>``.

The auth checker that accepted a login computes its names once (L{login_names}) and the
identity carries them; policies read ``identity.names`` and never parse a login.  Configured
logins (a policy's ``logins`` or ``per_login``) go through L{login_patterns}.  This lives in
config because both sides need it: auth when it checks a login, policy options when they read
configured logins — and config sits below both.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Iterable, Optional

import attrs

DEFAULT_DELIMITERS = ("@", ":", "|")


@attrs.frozen
class PassThroughName:
    tenant_id: str
    client_id: str
    suffix: str = ""

    @property
    def app(self) -> str:
        """``<tenant>@<client>``, the spelling every other spelling of this app is matched as."""
        return f"{self.tenant_id}@{self.client_id}".lower()


def _parse_guid(text: str) -> Optional[str]:
    if len(text) == 36:
        try:
            value = uuid.UUID(text)
        except ValueError:
            return None
        return str(value) if str(value) == text.lower() else None
    if len(text) in (22, 24):
        if len(text) == 24 and not text.endswith("=="):
            return None
        try:
            raw = base64.urlsafe_b64decode(text[:22] + "==")
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 16 or base64.urlsafe_b64encode(raw).decode("ascii")[:22] != text[:22]:
            return None
        return str(uuid.UUID(bytes=raw))
    return None


def parse_passthrough_name(username: str, delimiters: Iterable[str] = DEFAULT_DELIMITERS) -> Optional[PassThroughName]:
    """The tenant and client named by ``username``, or ``None`` if it is not a pass-through name."""
    if not username or len(username) > 512:
        return None
    main, dot, suffix = username.partition(".")
    if dot and (not suffix or not all(c.isprintable() and not c.isspace() for c in suffix)):
        return None
    found = [d for d in delimiters if d in main]
    if len(found) != 1 or main.count(found[0]) != 1:
        return None
    tenant_text, _, client_text = main.partition(found[0])
    tenant, client = _parse_guid(tenant_text), _parse_guid(client_text)
    if tenant is None or client is None:
        return None
    return PassThroughName(tenant, client, suffix)


def _app_name(text: str) -> Optional[tuple[str, str]]:
    """(``<tenant>@<client>``, suffix) when ``text`` is a pass-through login name (any delimiter)."""
    name = parse_passthrough_name(text, DEFAULT_DELIMITERS)
    if name is None:
        return None
    return name.app, name.suffix.lower()


def names_of(login: str, name: Optional[PassThroughName]) -> tuple[str, ...]:
    """
    The names a login is matched by, most specific first: as typed (lower-cased) and, for an
    Entra pass-through login (``name``, as the checker parsed it), its app ``<tenant>@<client>``
    with and without the ``.suffix``.
    """
    lowered = login.lower()
    if name is None:
        return (lowered,)
    names = [lowered]
    if name.suffix:
        names.append(f"{name.app}.{name.suffix.lower()}")
    names.append(name.app)
    return tuple(dict.fromkeys(names))


def login_names(login: str, passthrough: bool) -> tuple[str, ...]:
    """
    L{names_of} a login accepted as a pass-through login (``passthrough``) or not: a users-file
    login that merely looks like a pass-through name gets no app name.
    """
    return names_of(login, parse_passthrough_name(login) if passthrough else None)


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


__all__ = ["DEFAULT_DELIMITERS", "PassThroughName", "parse_passthrough_name", "names_of", "login_names", "login_patterns"]
