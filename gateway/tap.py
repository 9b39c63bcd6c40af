"""
The twistd/twist entry point: command-line options and the service they build.

Configuration problems are one line on stderr and exit status 78 (EX_CONFIG, sysexits.h),
before anything is bound or written: L{ConfigurationFailure}.  Not ``usage.UsageError``, for
which twistd and twist print their whole option list (twenty lines) ahead of the error, on
every restart of a unit with a broken file.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from twisted.application.service import IService
from twisted.python import usage

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.locate import locate_config

#: sysexits.h: configuration error.
EX_CONFIG = 78


class ConfigurationFailure(SystemExit):
    """The configuration does not load or build: exit EX_CONFIG; ``str()`` is the one line."""

    def __init__(self, message: str) -> None:
        super().__init__(EX_CONFIG)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Options(usage.Options):
    """Options override the matching keys of the TOML file."""

    synopsis = "[--config FILE] [--listen ENDPOINT] ..."
    longdesc = (
        "Accept mail over SMTP, store it durably in a spool and deliver it through Microsoft "
        "Graph (or, with no Graph credentials configured, into a local capture outbox)."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: $GRAPHSMTP_CONFIG, else /etc/graphsmtp/graphsmtp.toml when it exists, else safe built-in defaults)."],
        ["listen", "l", None, "Listen on this endpoint instead of the configured listeners, e.g. tcp:2525:interface=127.0.0.1."],
        ["state-dir", None, None, "Directory for the spool and the capture outbox (default ./graphsmtp-data)."],
        ["spool", None, None, "Spool directory (default STATE_DIR/spool)."],
        ["outbox", None, None, "Capture outbox Maildir (default STATE_DIR/outbox)."],
        ["hostname", None, None, "Host name for the SMTP banner and Received headers."],
        ["deliverer", None, None, "auto, capture or graph (default auto: graph when [graph] is configured)."],
    ]

    def postOptions(self) -> None:
        overrides = {
            "listen": self["listen"],
            "state_dir": self["state-dir"],
            "spool": self["spool"],
            "outbox": self["outbox"],
            "hostname": self["hostname"],
            "deliverer": self["deliverer"],
        }
        if overrides["deliverer"] not in (None, "auto", "capture", "graph"):
            raise usage.UsageError("--deliverer: must be auto, capture or graph")
        try:
            path = locate_config(self["config"], os.environ)
            given = {k: v for k, v in overrides.items() if v}
            self.config = load_config(path, given, os.environ)
            # Build everything now, not when twistd asks for the service: certificates,
            # policies and users files are checked here, so a mistake is one line from twistd
            # and nothing is bound.  SIGHUP re-reads the same file with the same overrides.
            self.service = _build(self.config, lambda: load_config(path, given, os.environ))
            # [gateway] workers = N > 1: intake in N worker processes (gateway.workers).
            from gateway.workers.supervisor import with_workers
            self.service = with_workers(self.service, self.config, path, given)
        except ConfigError as e:
            message = f"configuration error: {e}"
            sys.stderr.write(f"graphsmtp: {message}\n")
            raise ConfigurationFailure(message) from None


def _build(config: GatewayConfig, reload_config: Callable[[], GatewayConfig]) -> IService:
    from twisted.internet import reactor

    from gateway.service import GatewayOptions
    from gateway.service import makeService as compose

    return compose(GatewayOptions(config, reload_config=reload_config), reactor)


def makeService(options: Options) -> IService:
    """
    twistd's and twist's entry point: the gateway L{Options} built (see L{gateway.service.makeService},
    the composition root), under twistd's own log observer.
    """
    from twisted.application.app import ServerOptions

    parent = getattr(options, "parent", None)
    if not isinstance(parent, ServerOptions):
        return options.service  # `twist` (has its own --log-level) or a direct call
    # twistd: its usual log observer, with the level filter and per-message fields (gateway.logging).
    from gateway.logging import LoggingRoot, text_observer_for, twistd_default_observer

    return LoggingRoot(options.service, lambda: text_observer_for(twistd_default_observer(parent)))


__all__ = ["Options", "makeService"]
