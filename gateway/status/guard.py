"""
Optional login for the status endpoint: HTTP Basic checked against the users file, through
twisted.cred (``twisted.web.guard``), the same bcrypt checker SMTP AUTH uses.

Whether Basic may be used at all (only over TLS, or on loopback) is decided when the
configuration is read (L{gateway.config.status}); this module only wires the portal.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import IRealm, Portal
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.resource import IResource
from zope.interface import implementer

REALM = b"graphsmtp status"


@implementer(IRealm)
class StatusRealm:
    """Every authenticated login gets the same read-only status resource."""

    def __init__(self, resource: Any) -> None:
        self._resource = resource

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple:
        if IResource in interfaces:
            return IResource, self._resource, lambda: None
        raise NotImplementedError("the status realm only serves web resources")


def guarded(resource: Any, users_file: str, reactor: Any, threadpool: Any) -> HTTPAuthSessionWrapper:
    """``resource`` behind HTTP Basic; logins from ``users_file`` (bcrypt checks run in ``threadpool``)."""
    from gateway.auth.checkers import UsersFileChecker
    from gateway.config.errors import ConfigError
    from gateway.config.users import UsersFileError, UsersStore

    try:
        store = UsersStore(users_file)
    except UsersFileError as e:
        raise ConfigError("status.users_file", str(e)) from None
    checker = UsersFileChecker(store, reactor, threadpool)
    portal = Portal(StatusRealm(resource), [checker])
    return HTTPAuthSessionWrapper(portal, [BasicCredentialFactory(REALM)])


__all__ = ["guarded", "StatusRealm", "REALM"]
