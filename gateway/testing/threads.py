"""
A reactor and thread pools for tests of code that defers blocking work to threads
(``deferToThreadPool``): the work runs in the test's own thread, at once or when the test says,
so a trial test drives it with a L{twisted.internet.task.Clock} and no real threads.

- L{ImmediateReactor}: a C{Clock} whose C{callFromThread} runs the call at once.
- L{SynchronousThreadPool}: runs every job inline and counts them (``jobs``).
- L{ManualThreadPool}: queues jobs until the test runs them (a disk as slow as the test likes).

Both pools hand a failure to C{onResult} as a L{Failure}, as L{twisted.python.threadpool.ThreadPool}
does, so code under test sees exactly what it would see with real threads.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.python.failure import Failure

OnResult = Callable[[bool, Any], None]


class ImmediateReactor(Clock):
    """A task.Clock that also runs callFromThread calls at once (there are no real threads)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def _run(onResult: OnResult, f: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        result = f(*args, **kwargs)
    except BaseException:
        onResult(False, Failure())
    else:
        onResult(True, result)


class SynchronousThreadPool:
    """Runs each job inline in callInThreadWithCallback; ``jobs`` counts them."""

    def __init__(self) -> None:
        self.jobs = 0

    def callInThreadWithCallback(self, onResult: OnResult, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.jobs += 1
        _run(onResult, f, args, kwargs)


class ManualThreadPool:
    """Queues jobs; the test runs them with L{run_next} / L{run_all} (a disk as slow as it likes)."""

    def __init__(self) -> None:
        self.queue: list[tuple[OnResult, Callable[..., Any], tuple, dict]] = []

    def callInThreadWithCallback(self, onResult: OnResult, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.queue.append((onResult, f, args, kwargs))

    def run_next(self) -> None:
        onResult, f, args, kwargs = self.queue.pop(0)
        _run(onResult, f, args, kwargs)

    def run_all(self) -> None:
        while self.queue:
            self.run_next()


__all__ = ["ImmediateReactor", "SynchronousThreadPool", "ManualThreadPool"]
