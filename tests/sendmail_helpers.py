"""Helpers for tests of graphsmtp-sendmail's spool drop-off."""

from __future__ import annotations

from typing import Any

from gateway.testing.spool import make_test_spool


def daemon_spool(case: Any, directory: str) -> str:
    """
    A spool a daemon has set up (recovered and locked once), with that daemon stopped again:
    the only kind of spool graphsmtp-sendmail drops mail into.
    """
    spool = make_test_spool(directory)
    case.successResultOf(spool.recover_schedule())
    spool.close()
    return directory
