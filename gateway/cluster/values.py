"""
What cluster admission hands out and promises (L{gateway.cluster.admission}): the interfaces the
Graph deliverer asks, a slot, a "not now", and what a node knows of one mailbox.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any, Hashable, Optional

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface


class IMailboxAdmission(Interface):
    """Who may start a Graph delivery for a mailbox now (what the deliverer asks)."""

    def admit(key: Hashable, ticket: str) -> Deferred:
        """Fire with a slot (``release()`` exactly once) or a L{Later}; never waits more than ``max_hold``."""

    def pause(key: Hashable, seconds: Optional[float], reason: str) -> float:
        """Pause the mailbox (a 429); fire-and-forget to the other nodes; the pause's end."""

    def succeeded(key: Hashable) -> None:
        """A delivery went through: the next throttle starts the backoff afresh."""

    def snapshot() -> tuple:
        """``(key, in_flight, paused_until, pause_reason, next_slot)`` per mailbox, for the status page."""


class ITenantPauses(Interface):
    """A tenant paused for credential trouble, shared by every node (what ``needs admin`` stops)."""

    def tenant_paused(tenant_key: Hashable) -> Optional[tuple[float, str]]:
        """``(until, detail)`` while another node (or this one) paused the tenant, else None."""

    def pause_tenant(tenant_key: Hashable, until: float, detail: str) -> None:
        """Tell every node the tenant is paused until ``until`` (detail: one clean line, no secret)."""

    def resume_tenant(tenant_key: Hashable) -> None:
        """The tenant's credentials work again."""


def short_digest(value: Any) -> str:
    """A short, stable name for a tenant key in Redis keys (the key itself holds URLs and ids)."""
    return hashlib.sha256(repr(value).encode("utf-8")).hexdigest()[:16]


def mailbox_name(key: Hashable) -> str:
    """``<tenant digest>:<mailbox>`` for a deliverer key ``(tenant_key, mailbox)``."""
    if isinstance(key, tuple) and len(key) == 2:
        return f"{short_digest(key[0])}:{key[1]}"
    return short_digest(key)


@attrs.frozen
class Later:
    """Not now: come back at ``retry_at`` (absolute time, this node's clock)."""

    retry_at: float
    reason: str


@attrs.define(eq=False)
class ClusterSlot:
    """One admitted delivery: a Redis lease (``lease`` set) or a solo slot taken while degraded."""

    owner: Any  # the ClusterAdmission that gave it
    key: Hashable
    lease: Optional[str]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.owner._release(self)


@attrs.define
class LocalMailbox:
    """What this node knows of one mailbox."""

    in_flight: int = 0
    solo_in_flight: int = 0
    paused_until: float = 0.0
    pause_reason: str = ""
    throttles: int = 0
    tat: float = 0.0
    starts: deque = attrs.field(factory=deque)
    started: int = 0
    max_in_flight: int = 0


__all__ = ["IMailboxAdmission", "ITenantPauses", "Later", "ClusterSlot", "LocalMailbox", "mailbox_name", "short_digest"]
