"""
Whether the Redis a node talks to still holds the state its starts were counted in.

A Redis can lose that state without any call failing: restarted without persistence, or
reloading a snapshot older than the requests now running, or replaced by a replica in a
failover, between two calls of a node.  Two signs show it:

- the cluster's *epoch* (L{gateway.cluster.scripts}): a random value the first node to find it
  missing writes; ADMIT and RENEW compare it with the one this node knows;
- the server's ``run_id`` (``INFO server``), read again whenever the connection was made anew:
  a restarted or another server has another one, even when it reloaded the old epoch.

A node with nothing known yet (its first answer, or just after rejoining, which waited a whole
window anyway) takes what it finds: nothing it relied on was lost.  A server that does not tell
its ``run_id`` (INFO refused: it is in ACL category ``@dangerous``; a proxy) is compared by its
epoch alone, said once in the log: a restart that reloads an older snapshot goes unnoticed then.
"""

from __future__ import annotations

import secrets
from typing import Any, Optional

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class RedisContinuity:
    """``connection`` a L{gateway.policy.redis_connection.RedisConnection} (``generation``)."""

    log = Logger()

    def __init__(self, connection: Any, node_id: str, clock: IReactorTime) -> None:
        self.connection = connection
        self.node_id = node_id
        self.clock = clock
        self.epoch = ""
        #: The run_id relied on: None not read yet, "" the server does not tell.
        self.server_id: Optional[str] = None
        self._refusal_said = False
        self.generation: int = connection.generation

    def epoch_args(self) -> list[str]:
        """ARGV of the epoch check: the epoch known here, and a new one to write if Redis has none."""
        return [self.epoch, f"{self.node_id}:{self.clock.seconds()!r}:{secrets.token_hex(8)}"]

    def epoch_seen(self, epoch: str) -> bool:
        """Redis answered with ``epoch``: False when it is not the one this node relied on."""
        known, self.epoch = self.epoch, epoch
        return not known or known == epoch

    def forget(self) -> None:
        """After an outage: the rejoin wait covers whatever Redis kept or lost."""
        self.epoch, self.server_id, self.generation = "", None, self.connection.generation

    @property
    def unsure(self) -> bool:
        """The connection was made anew (or the server is not known yet): ask the server first."""
        return self.server_id is None or self.connection.generation != self.generation

    def same_server(self, r: Any) -> Deferred:
        """Fires with False when another server answers than the one this node relied on."""
        d = r.execute_command("INFO", "server")

        def seen(info: Any) -> bool:
            # The connection that answered is the one now: a command sent before the connection
            # was made (txredisapi queues it) is answered on the new one.
            run_id = _run_id(info) or ""
            known, self.server_id, self.generation = self.server_id, run_id, self.connection.generation
            return not known or not run_id or known == run_id

        def refused(failure: Any) -> bool:
            failure.trap(txredisapi.ResponseError)
            if not self._refusal_said:
                self._refusal_said = True
                self.log.warn("cluster: Redis refuses INFO ({error}): a restart that reloads an older snapshot "
                              "goes unnoticed; allow INFO to the gateway's Redis user", error=failure.getErrorMessage())
            return seen("")

        return d.addCallbacks(seen, refused)


def _run_id(info: Any) -> Optional[str]:
    for line in str(info).splitlines():
        if line.startswith("run_id:"):
            return line.split(":", 1)[1].strip()
    return None


__all__ = ["RedisContinuity"]
