"""
``graphsmtp-config``: check a configuration without starting the gateway, and list the policy
and observer plugins that can be named in it.

``check`` builds every component exactly as ``twistd graphsmtp`` would (certificates read,
policies built, users file opened) but binds no port and starts nothing, so it is safe to run
next to a live gateway before a reload or restart.  ``check --online`` also asks Entra for a
token (L{gateway.cli.online_check}).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, Sequence, TextIO

from gateway.cli.sysexits import EX_CONFIG, EX_SOFTWARE, SysexitsArgumentParser
from gateway.config import ConfigError, GatewayConfig, ListenerConfig, load_config

if TYPE_CHECKING:  # the wiring is imported when a check runs, not when the command starts
    from gateway.wiring import Components


def check(path: Optional[str], out: TextIO, online: bool = False) -> int:
    try:
        config, components = _build(path)
    except ConfigError as e:
        where = "" if e.source else f"{path or '(defaults)'}: "
        out.write(f"graphsmtp-config: {where}{e}\n")
        return EX_CONFIG
    except Exception as e:  # a bug, not the admin's mistake: still one line (no secrets in it)
        out.write(f"graphsmtp-config: {path or '(defaults)'}: internal error while checking ({type(e).__name__})\n")
        return EX_SOFTWARE
    out.write(f"{path or '(built-in defaults)'}: OK\n")
    _describe_plugins(config, components, out)
    _describe_delivery(config, out)
    for part in components.listeners:
        _describe_listener(part.config, out)
    if online:
        from gateway.cli.online_check import check_online

        return check_online(config, out)
    return 0


def _build(path: Optional[str]) -> tuple[GatewayConfig, Components]:
    """Every component as ``twistd graphsmtp`` builds it, without binding a port."""
    from twisted.internet import reactor

    from gateway.service import build_components

    config = load_config(path)
    return config, build_components(config, reactor, listen=False)


def _describe_plugins(config: GatewayConfig, components: Components, out: TextIO) -> None:
    for module, error in sorted(components.broken_plugins.items()):
        # Not fatal (start-up is not refused either) but never silent: a policy it provides is missing.
        out.write(f"  WARNING        plugin module {module} failed to import: {error}\n")
    for directory in config.plugin_paths:
        out.write(f"  plugin path    {directory}\n")
    components.plugin_search.undo()  # checked in-process (tests, reload checks): leave no trace


def _describe_delivery(config: GatewayConfig, out: TextIO) -> None:
    out.write(f"  host name      {config.hostname}\n")
    out.write(f"  spool          {config.spool.directory}\n")
    if config.deliverer == "capture":
        out.write(f"  delivery       capture outbox {config.capture.outbox} (no Graph credentials: nothing is sent)\n")
    else:
        out.write(f"  delivery       Microsoft Graph ({config.graph.graph_url})\n")


def _describe_listener(listener: ListenerConfig, out: TextIO) -> None:
    policies = ", ".join(ref.use for ref in listener.policies) or "none"
    trusted = ", ".join(str(n) for n in listener.trusted_networks) or "none"
    out.write(
        f"  listener {listener.name:<8} {listener.endpoint}  tls={listener.tls} auth={listener.auth} "
        f"size={listener.limits.max_message_size} trusted={trusted} policies={policies}\n"
    )
    if "systemd:" in listener.endpoint:
        out.write(f"  {'':<17} socket passed by systemd (checked, not bound: see graphsmtp-smtp.socket)\n")


def list_plugins(kind: str, out: TextIO, markdown: bool = False, config_path: Optional[str] = None) -> int:
    """
    The installed plugins of ``kind``; with ``config_path``, also those in that file's
    ``[gateway] plugin_paths`` (the directories are added for the listing only, then removed).
    """
    if config_path is None or markdown:
        return _list_plugins(kind, out, markdown)
    from gateway.plugins.search import add_plugin_paths

    try:
        config = load_config(config_path)
    except ConfigError as e:
        where = "" if e.source else f"{config_path}: "
        out.write(f"graphsmtp-config: {where}{e}\n")
        return EX_CONFIG
    added = add_plugin_paths(config.plugin_paths)
    try:
        return _list_plugins(kind, out, markdown)
    finally:
        added.undo()


def _list_plugins(kind: str, out: TextIO, markdown: bool = False) -> int:
    if kind == "policies":
        from gateway.policy.catalog import (
            builtin_policy_factories,
            render_markdown,
            render_text,
        )
        from gateway.policy.registry import discover_policies as discover

        if markdown:  # docs/policies.md: graphsmtp's own policies, whatever else is installed
            out.write(render_markdown(builtin_policy_factories()))
            return 0
    else:
        from gateway.delivery.observers import discover_observers as discover
    found = discover()
    if kind == "policies":
        out.write(render_text(found.plugins.values()))
    else:
        for name in sorted(found.plugins):
            out.write(f"{name:<20} {getattr(found.plugins[name], 'description', '')}\n")
    for module, error in sorted(found.broken.items()):
        out.write(f"BROKEN plugin module {module}: {error}\n")
    return EX_SOFTWARE if found.broken else 0  # a plugin module that does not import is a bug


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout) -> int:
    parser = SysexitsArgumentParser(prog="graphsmtp-config", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate a configuration file (binds nothing)")
    p_check.add_argument("config", nargs="?", help="TOML file (default: built-in defaults)")
    p_check.add_argument("--online", action="store_true",
                         help="also get a Graph token for the configured tenant and check its Mail.Send permission "
                              "(exit 78: an admin must act, 75: the token endpoint is unreachable)")
    p_policies = sub.add_parser("policies", help="list the policy plugins that can be named in `use = ...`, with their options")
    p_policies.add_argument("--markdown", action="store_true",
                            help="print docs/policies.md (the built-in policies' options as Markdown)")
    p_observers = sub.add_parser("observers", help="list the delivery observer plugins")
    for p in (p_policies, p_observers):
        p.add_argument("--config", metavar="FILE",
                       help="also list the plugins in this configuration's [gateway] plugin_paths")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.config, out, online=args.online)
    return list_plugins(args.command, out, markdown=getattr(args, "markdown", False), config_path=args.config)


if __name__ == "__main__":
    sys.exit(main())
