"""
The twisted.cred realm: an authenticated avatar id becomes the L{Identity} the SMTP session
and the policies see.

Checkers in this package return the L{Identity} itself as the avatar id, because what a login
may do (its sender patterns, its delivery credentials) is known where the login is checked:
in the users file or from the pass-through user name.  The realm only hands it over for the
one interface the SMTP layer asks for.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import IRealm
from zope.interface import implementer

from gateway.policy.interfaces import IAuthenticatedIdentity, Identity


def _logout() -> None:
    """Nothing to release: an identity holds no resources."""


@implementer(IRealm)
class IdentityRealm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple:
        if IAuthenticatedIdentity not in interfaces:
            raise NotImplementedError("graphsmtp's realm only provides IAuthenticatedIdentity")
        if not isinstance(avatarId, Identity):
            # A bare login name would mean "may send as anyone" (empty allowed_senders): a
            # checker that forgot to say what its logins may do must not get that by default.
            raise TypeError(f"checker returned {type(avatarId).__name__}, not an Identity")
        return IAuthenticatedIdentity, avatarId, _logout


__all__ = ["IdentityRealm"]
