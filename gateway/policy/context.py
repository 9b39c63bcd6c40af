"""
What a policy factory is given besides its options: the shared services of the gateway.

Policies must not reach for globals (the reactor, a Redis client, the configuration file), so
tests can build them with a fake clock and a chosen backend, and two gateways in one process
(integration tests) do not share state by accident.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import attrs
from twisted.internet.interfaces import IReactorTime

if TYPE_CHECKING:
    from gateway.policy.redis_connection import RedisConnection


@attrs.frozen
class PolicyContext:
    """
    ``clock`` is an ``IReactorTime`` (all waiting and all timestamps come from it).
    ``redis`` is the gateway's L{gateway.policy.redis_connection.RedisConnection} when a
    ``[redis]`` section is configured, else ``None``.  ``listener`` is the listener's name and
    ``key`` the configuration key of the policy being built (``listener.submission.policies[1]``;
    filled in by the registry), handy as a default namespace for shared state.  ``hostname``
    is the gateway's own name; ``limits`` the listener's L{gateway.config.model.Limits}.
    """

    clock: IReactorTime
    listener: str = "default"
    redis: Optional[RedisConnection] = None
    key: str = ""
    hostname: str = "localhost"
    limits: Optional[Any] = None


__all__ = ["PolicyContext"]
