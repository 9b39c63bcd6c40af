"""
Where the command-line tools find the gateway's configuration, and how much of it they read.

The tools find the configuration file as the daemon does (L{gateway.config.locate}:
``--config FILE``, else ``$GRAPHSMTP_CONFIG``, else the system file), with ``--spool DIR``
overriding its spool directory.  graphsmtp-sendmail runs as every local user, so it reads only
the sections submission needs (L{load_submission_config}): the daemon's private files stay
unopened.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.locate import ENVIRONMENT_VARIABLE, SYSTEM_CONFIG, locate_config


class NoConfiguration(ConfigError):
    """Neither --config, $GRAPHSMTP_CONFIG nor the system configuration file exists."""

    def __init__(self, system_config: str) -> None:
        super().__init__("--config", f"no configuration found (give --config FILE, set GRAPHSMTP_CONFIG "
                                     f"or create {system_config})")


def _config_path(config: Optional[str], spool: Optional[str], environ: Mapping[str, str],
                 system_config: str) -> Optional[str]:
    """The file to read: with only a spool named, the system file is not consulted."""
    if spool and not config:
        return environ.get(ENVIRONMENT_VARIABLE) or None
    return locate_config(config, environ, system_config)


def load_tool_config(config: Optional[str], spool: Optional[str], environ: Mapping[str, str],
                     system_config: str = SYSTEM_CONFIG, required: bool = False) -> GatewayConfig:
    """
    The configuration the command-line tools use, found as the daemon finds it
    (L{locate_config}), with ``spool`` overriding the spool directory.  The system file is
    not consulted when a spool is named.  ``required``: no file at all (and no spool named)
    is L{NoConfiguration} rather than the built-in defaults.  Raises L{ConfigError}.
    """
    config_path = _config_path(config, spool, environ, system_config)
    if config_path is None and required and not spool:
        raise NoConfiguration(system_config)
    return load_config(config_path, {"spool": spool} if spool else {}, environ)


#: What graphsmtp-sendmail reads from the configuration: where the spool and the [local] socket
#: are, the host name, header defaults and size limits.  Everything else stays unread — above
#: all the daemon's private files ([graph] secrets, the [auth] users file, Redis passwords:
#: chmod 600, or systemd credentials only the daemon gets), which any other user's sendmail
#: could not read, so it failed with EX_CONFIG in every deployment that has them.
_SUBMISSION_SECTIONS = ("gateway", "spool", "limits", "local")
_SUBMISSION_LISTENER_KEYS = ("name", "endpoint", "limits")
_SUBMISSION_LOCAL_DROPPED = ("policies",)  # the daemon runs them; naming plugins needs no check here


def load_submission_config(config: Optional[str], spool: Optional[str], environ: Mapping[str, str],
                           system_config: str = SYSTEM_CONFIG) -> GatewayConfig:
    """
    L{load_tool_config} (required) restricted to what submission needs, see
    L{_SUBMISSION_SECTIONS}: the daemon's secrets and users file are never opened.
    """
    from gateway.config.loader import build_config, load_toml

    path = _config_path(config, spool, environ, system_config)
    if path is None and not spool:
        raise NoConfiguration(system_config)
    view = submission_view(load_toml(path) if path else {})
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    try:
        return build_config(view, {"spool": spool} if spool else {}, environ, base_dir)
    except ConfigError as e:
        if path:
            raise e.in_file(path) from None
        raise


def submission_view(data: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a parsed configuration file that submission reads (L{_SUBMISSION_SECTIONS})."""
    view = {name: data[name] for name in _SUBMISSION_SECTIONS if name in data}
    listeners = data.get("listener")
    if isinstance(listeners, list):
        view["listener"] = [_listener_view(listener) for listener in listeners]
    local = view.get("local")
    if isinstance(local, dict):
        view["local"] = {k: v for k, v in local.items() if k not in _SUBMISSION_LOCAL_DROPPED}
    return view


def _listener_view(listener: object) -> object:
    """A listener table without its policies, auth and TLS files (what is not a table is left to the loader)."""
    if not isinstance(listener, dict):
        return listener
    return {k: v for k, v in listener.items() if k in _SUBMISSION_LISTENER_KEYS}


__all__ = ["NoConfiguration", "load_tool_config", "load_submission_config", "submission_view"]
