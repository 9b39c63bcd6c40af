"""
Sections owned by optional features.  Each feature module parses its own table; this module
only names them, so the loader stays small and a feature adds itself in one line here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from gateway.config.reader import TableReader

Resolver = Callable[[str], str]


def parse_graph(root: TableReader, environ: Mapping[str, str], resolve: Resolver) -> Any:
    """The ``[graph]`` section, or ``None`` when no Graph credentials are configured."""
    if not root.has("graph"):
        return None
    from gateway.config.graph import parse_graph_section
    return parse_graph_section(root.table_at("graph"), environ, resolve)


def parse_all(root: TableReader, environ: Mapping[str, str], resolve: Resolver) -> dict[str, Any]:
    """Every other optional section, keyed by name (missing sections parse to their defaults)."""
    from gateway.config.auth import parse_auth_section
    from gateway.config.policy import parse_observers, parse_redis
    sections: dict[str, Any] = {}
    sections["redis"] = parse_redis(root, environ, resolve)
    sections["observers"] = parse_observers(root, environ, resolve)
    sections["auth"] = parse_auth_section(root, environ, resolve)
    from gateway.config.status import parse_status
    sections["status"] = parse_status(root, environ, resolve, default_users_file=sections["auth"].users_file)
    from gateway.config.cluster import check_cluster, parse_cluster
    sections["cluster"] = parse_cluster(root, environ, resolve)
    check_cluster(sections)
    return sections


__all__ = ["parse_graph", "parse_all"]
