"""
The local time zone for one test: ``TZ`` set and ``time.tzset()`` called, both undone at
cleanup, for code whose output depends on the host's zone (log times, HTTP dates)::

    local_time_zone(self, "Europe/Berlin")
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase


def local_time_zone(case: SynchronousTestCase, name: str) -> None:
    """Run the rest of ``case`` in the time zone ``name`` (a zone name or a POSIX TZ rule)."""
    before = os.environ.get("TZ")

    def restore() -> None:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()

    case.addCleanup(restore)
    os.environ["TZ"] = name
    time.tzset()


__all__ = ["local_time_zone"]
