"""
Dedicated thread pools as services, so blocking work never lands on the reactor's default
pool (which the DNS resolver shares) and pools start and stop with the application.
"""

from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.python.threadpool import ThreadPool


class ThreadPoolService(Service):
    """
    Owns one named L{ThreadPool}.  ``pool`` exists from construction, so components can be
    built with it before the application starts (jobs queue until the pool starts).

    Stopping joins the threads (blocking), which is what shutdown wants: it waits for the
    fsync or token call in progress.  Put this service *before* its users in a MultiService
    so it stops *after* them.
    """

    name: Optional[str]  # type: ignore[assignment]  # Service declares it as plain None

    def __init__(self, name: str, minthreads: int, maxthreads: int) -> None:
        self.name = name
        self.pool = ThreadPool(minthreads, maxthreads, name)

    @classmethod
    def wrapping(cls, pool: ThreadPool) -> "ThreadPoolService":
        """A service for a pool that already exists (its size and name stay as they are)."""
        service = cls.__new__(cls)
        service.name = pool.name
        service.pool = pool
        return service

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


__all__ = ["ThreadPoolService"]
