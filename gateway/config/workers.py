"""
``[gateway] workers``: how many processes run SMTP intake.

``1`` (the default) is the single process graphsmtp always was.  ``N > 1`` makes the main
process bind the listeners and hand the listening sockets to N intake worker processes
(L{gateway.workers}); ``"auto"`` means one worker per CPU.

Some state lives in one process and would be silently split N ways by workers — today only the
``rate-limit`` policy's in-memory backend, whose limit would become N times the configured one.
An explicit ``workers = N > 1`` with such a policy on a TCP listener is refused here (use
``backend = "redis"``, or ``workers = 1``); ``"auto"`` falls back to one process and says why
in one log line at start-up (L{WorkersConfig.fallback}).  The ``[local]`` socket is always
served by the main process, so its policies never count.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional

import attrs

from gateway.config.errors import ConfigError
from gateway.config.model import ListenerConfig
from gateway.config.reader import TableReader

KEY = "gateway.workers"
#: More processes than this is a typo, not a plan (each one holds a full intake stack).
MAX_WORKERS = 64


@attrs.frozen
class WorkersConfig:
    """
    ``count`` intake processes (1: no workers, the main process serves the listeners itself).
    ``requested`` is what the file said (an integer, or ``"auto"``); ``fallback`` says why
    ``"auto"`` ended up with one process although the machine has more CPUs.
    """

    count: int = 1
    requested: Any = 1
    fallback: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.count > 1


def read_workers(gw: TableReader) -> Any:
    """The raw ``workers`` value, validated for shape (``"auto"`` or an integer 1..64)."""
    value = gw.raw("workers", 1)
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(KEY, f"must be a whole number of processes from 1 to {MAX_WORKERS} or \"auto\", not {value!r}")
    if not 1 <= value <= MAX_WORKERS:
        raise ConfigError(KEY, f"must be from 1 to {MAX_WORKERS} (1 = a single process, no workers), not {value}")
    return value


def unshareable(listeners: Iterable[ListenerConfig]) -> list[str]:
    """Why intake cannot be split across processes with these listeners (empty: it can)."""
    reasons = []
    for listener in listeners:
        for ref in listener.policies:
            if ref.use == "rate-limit" and ref.options.get("backend", "memory") != "redis":
                reasons.append(f"listener {listener.name} has a rate-limit policy with the in-memory backend "
                               "(each worker would count on its own)")
    return reasons


def resolve_workers(requested: Any, listeners: Iterable[ListenerConfig],
                    cpu_count: Callable[[], Optional[int]] = os.cpu_count) -> WorkersConfig:
    """The number of intake processes for ``requested`` (see the module docstring)."""
    wanted = (cpu_count() or 1) if requested == "auto" else requested
    if wanted <= 1:
        return WorkersConfig(1, requested)
    reasons = unshareable(listeners)
    if not reasons:
        return WorkersConfig(min(wanted, MAX_WORKERS), requested)
    if requested == "auto":
        return WorkersConfig(1, requested, fallback=reasons[0])
    raise ConfigError(KEY, f"is {requested}, but {reasons[0]}: set backend = \"redis\" on that policy, or workers = 1")


__all__ = ["WorkersConfig", "read_workers", "resolve_workers", "unshareable", "MAX_WORKERS"]
