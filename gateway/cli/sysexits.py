"""
Exit statuses from sysexits(3), and an argparse parser that uses them.

Every graphsmtp command ends an error with one line on stderr and one of these statuses, so a
script or a configuration-management run can tell "you called it wrong" (64) from "the
configuration is wrong" (78) or "try again later" (75) without parsing text.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Optional

EX_OK = 0
EX_USAGE = 64        # wrong arguments, or input given the wrong way
EX_DATAERR = 65      # the input (a users file, a password) is unusable
EX_NOINPUT = 66      # an input file does not exist or cannot be read
EX_NOUSER = 67       # no such login
EX_UNAVAILABLE = 69  # a service the command needs refused (Graph said no)
EX_SOFTWARE = 70     # a bug: an error nobody anticipated
EX_CANTCREAT = 73    # an output file cannot be written
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77       # unsafe permissions
EX_CONFIG = 78       # the configuration is wrong


class SysexitsArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and EX_USAGE instead of the usage text and 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog.split()[0]} --help)\n")
        sys.exit(EX_USAGE)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        sys.exit(EX_USAGE if status == 2 else status)


__all__ = [
    "EX_OK", "EX_USAGE", "EX_DATAERR", "EX_NOINPUT", "EX_NOUSER", "EX_UNAVAILABLE", "EX_SOFTWARE", "EX_CANTCREAT",
    "EX_IOERR", "EX_TEMPFAIL", "EX_NOPERM", "EX_CONFIG", "SysexitsArgumentParser",
]
