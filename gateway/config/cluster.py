"""
The ``[cluster]`` section: several gateways that share one tenant's Graph limits through Redis.

Without ``[cluster]`` a gateway paces its mailboxes alone (in memory).  With it, every gateway
with the same ``name`` shares, through the ``[redis]`` connection, each mailbox's concurrency
slots (leases that expire ``lease_ttl`` after their last renewal, so a dead node's slots come
back by themselves), its pacing, its Retry-After pauses and each tenant's "needs admin" pause.
When Redis cannot be reached, each node keeps delivering with ``1 / expected_nodes`` of every
limit until Redis answers again (checked every ``retry`` seconds).
"""

from __future__ import annotations

import socket
from typing import Callable, Mapping, Optional

import attrs

from gateway.config.errors import ConfigError
from gateway.config.reader import TableReader

Resolver = Callable[[str], str]


@attrs.frozen
class ClusterConfig:
    """
    ``name`` groups the gateways that share limits (Redis keys are prefixed with it);
    ``node_id`` names this gateway in logs, leases and the status page (default: the host
    name); ``expected_nodes`` is how many gateways normally run (each takes that share of the
    limits while Redis is down); ``lease_ttl`` how long a slot outlives its last renewal;
    ``retry`` how often a node without Redis asks again (its connection also retries at least
    that often, so the others know when it has stopped starting alone); ``rate_window`` the window
    ``graph.mailbox_rate`` counts in (60 s: Exchange's per-minute limit; tests shrink it).
    """

    name: str = "graphsmtp"
    node_id: str = attrs.field(factory=socket.gethostname)
    expected_nodes: int = 1
    lease_ttl: float = 30.0
    retry: float = 5.0
    rate_window: float = 60.0


def parse_cluster(root: TableReader, environ: Mapping[str, str], resolve: Resolver) -> Optional[ClusterConfig]:
    """The ``[cluster]`` section, or None when absent (each gateway paces alone)."""
    if not root.has("cluster"):
        root.mark_used("cluster")
        return None
    t = root.table_at("cluster")
    name = t.word("name", "graphsmtp")
    node_id = t.string("node_id") or socket.gethostname()
    for key, value in (("name", name), ("node_id", node_id)):
        if not value or any(c.isspace() or c in ":{}" for c in value):
            raise ConfigError(t.key(key), "must be a non-empty word without spaces, colons or braces")
    expected = t.integer("expected_nodes", 1, 1, 64)
    lease_ttl = t.duration("lease_ttl", 30.0)
    if lease_ttl < 1.0:
        raise ConfigError(t.key("lease_ttl"), "must be at least 1 second")
    retry = t.duration("retry", 5.0)
    if retry <= 0:
        raise ConfigError(t.key("retry"), "must be more than 0 seconds")
    window = t.duration("rate_window", 60.0)
    if window <= 0:
        raise ConfigError(t.key("rate_window"), "must be more than 0 seconds")
    t.finish()
    return ClusterConfig(name, node_id, expected, lease_ttl, retry, window)


def check_cluster(cluster: Optional[ClusterConfig], redis: object) -> None:
    """``[cluster]`` needs ``[redis]``: say so at start-up, not at the first delivery."""
    if cluster is not None and redis is None:
        raise ConfigError("cluster", "needs a [redis] section (the gateways share their limits through it)")


__all__ = ["ClusterConfig", "parse_cluster", "check_cluster"]
