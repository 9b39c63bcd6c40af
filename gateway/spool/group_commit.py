"""
Group commit of accepted messages: the sessions that finish DATA while a flush is running
share the next one.

Durable acceptance costs device flushes (data before the renames, the directory after them),
and a flush costs the same for one message as for fifty.  So commits are not run one thread
job each: they queue here, on the reactor thread, and one job at a time takes *everything
queued so far* as a batch (L{gateway.spool.accept.Acceptor.publish_batch}).  A batch closes when
the previous one returns: a lone client pays one batch's flushes and waits for nobody, and
fifty clients arriving together share a handful of batches instead of paying for fifty.
No commit is ever answered before the batch holding it is durable.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.spool.interfaces import SpoolError


class GroupCommitter:
    """
    ``run_batch(requests)`` runs in the spool's thread pool (through ``in_pool``) and returns
    one result per request: a value (fired on that request's Deferred) or a L{SpoolError}
    (failed on it).  Used on the reactor thread only.
    """

    log = Logger()

    def __init__(self, in_pool: Callable[..., Deferred], run_batch: Callable[[list], list]) -> None:
        self._in_pool = in_pool
        self._run_batch = run_batch
        self._waiting: list[tuple[Any, Deferred]] = []
        self._running = False
        #: Batches run and requests committed so far (for tests and the benchmark notes).
        self.batches = 0
        self.requests = 0

    def commit(self, request: Any) -> Deferred:
        d: Deferred = Deferred()
        self._waiting.append((request, d))
        if not self._running:
            self._next_batch()
        return d

    def _next_batch(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        self.batches += 1
        self.requests += len(batch)
        self._in_pool(self._run_batch, [request for request, _ in batch]).addBoth(self._finished, batch)

    def _finished(self, results: Any, batch: list) -> None:
        self._running = False
        if isinstance(results, Failure):
            # A bug, not a disk error (those come back per request): fail everyone loudly.
            self.log.failure("group commit failed unexpectedly", results)
            results = [SpoolError("spool commit failed unexpectedly")] * len(batch)
        # Start the next batch before answering: the answers' callbacks may commit again.
        if self._waiting:
            self._next_batch()
        for (_, d), result in zip(batch, results, strict=False):
            if isinstance(result, Exception):
                d.errback(Failure(result))
            else:
                d.callback(result)


__all__ = ["GroupCommitter"]
