"""
``[gateway] plugin_paths``: extra directories searched for ``twisted/plugins``, checked when the
configuration loads so a wrong directory stops start-up with its key named.  Putting them on the
search path is L{gateway.plugins.search}'s job, at start-up.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from gateway.config.errors import ConfigError


def parse_plugin_paths(values: Iterable[str], resolve: Callable[[str], str], key: str) -> tuple[str, ...]:
    """
    The configured directories, absolute; each must exist and contain ``twisted/plugins/``
    (a directory pointing one level too deep or too shallow is the usual mistake: say so).
    """
    paths = []
    for i, value in enumerate(values):
        where = f"{key}[{i}]"
        if not value.strip():
            raise ConfigError(where, "must be a directory, not an empty string")
        path = resolve(value)
        if not os.path.isdir(path):
            raise ConfigError(where, f"{path} is not a directory")
        if not os.path.isdir(os.path.join(path, "twisted", "plugins")):
            hint = ""
            if os.path.basename(path) == "plugins" and os.path.basename(os.path.dirname(path)) == "twisted":
                hint = f" (give the directory that contains twisted/, here {os.path.dirname(os.path.dirname(path))})"
            raise ConfigError(where, f"{path} has no twisted/plugins/ directory{hint}")
        paths.append(path)
    return tuple(dict.fromkeys(paths))


__all__ = ["parse_plugin_paths"]
