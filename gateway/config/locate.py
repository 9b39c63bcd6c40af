"""
Where the configuration file is, decided the same way by the daemon and every command.

The daemon (``twistd graphsmtp``) and the tools (graphsmtp-sendmail, graphsmtp-queue) must
agree on it: a sendmail that guessed differently from the daemon would queue mail into a
spool nobody reads.  Order: an explicit ``--config``; else ``$GRAPHSMTP_CONFIG``; else
L{SYSTEM_CONFIG} when that file exists; else none (built-in defaults).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

SYSTEM_CONFIG = "/etc/graphsmtp/graphsmtp.toml"
ENVIRONMENT_VARIABLE = "GRAPHSMTP_CONFIG"


def locate_config(explicit: Optional[str], environ: Mapping[str, str],
                  system_config: str = SYSTEM_CONFIG) -> Optional[str]:
    """The configuration file to read, or None when there is none anywhere."""
    if explicit:
        return explicit
    from_environment = environ.get(ENVIRONMENT_VARIABLE)
    if from_environment:
        return from_environment
    if os.path.exists(system_config):
        return system_config
    return None


__all__ = ["SYSTEM_CONFIG", "ENVIRONMENT_VARIABLE", "locate_config"]
