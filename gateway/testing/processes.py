"""
A running daemon's child processes, read from Linux's /proc: for tests and benchmarks that act
on the spool's commit process of a ``twistd graphsmtp`` they started (stop it, kill it, read its
CPU time), which only its parent knows by its pid.
"""

from __future__ import annotations

import os
from typing import Optional

#: What the commit process's command line holds (``python -m gateway.spool.commit_process ...``).
COMMIT_PROCESS_MODULE = b"gateway.spool.commit_process"


def children(pid: int) -> list[int]:
    """The pids of the live children of every thread of ``pid`` (none if it is gone)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def commit_child(pid: int) -> Optional[int]:
    """
    The pid of the spool's commit process the daemon ``pid`` runs, or None.  (A process in the
    middle of its exec shows an empty command line; the daemon starts its commit process at
    start-up, long before a test or bench looks for it.)
    """
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if COMMIT_PROCESS_MODULE in f.read():
                    return child
        except OSError:
            continue  # ended meanwhile
    return None


__all__ = ["COMMIT_PROCESS_MODULE", "children", "commit_child"]
