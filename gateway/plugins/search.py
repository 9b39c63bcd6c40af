"""
Where plugins are looked for: ``[gateway] plugin_paths``, and which plugin modules are broken.

``twisted.plugin`` finds plugins in the ``twisted/plugins/`` directory of every ``sys.path``
entry.  Before ``plugin_paths`` the only way to add a directory was ``PYTHONPATH``, which a
systemd unit or a test run easily loses; now each configured directory is put on ``sys.path``
(so the plugin's own package imports) and its ``twisted/plugins/`` on ``twisted.plugins``'s
search path, at start-up, before any plugin is looked up.  The configured directories are
checked when the configuration loads (L{gateway.config.plugin_paths}).

A plugin module that fails to import is dropped by ``getPlugins`` with a traceback nobody
connects to a missing policy.  L{broken_plugin_modules} names each such module with its
exception, so start-up logs one line per module and ``graphsmtp-config check`` prints it,
whether or not a listener names a policy it provides.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Iterable, Mapping, Optional

import attrs
from twisted.plugin import getCache
from twisted.python.modules import getModule


@attrs.define(eq=False)
class PluginSearchPath:
    """What L{add_plugin_paths} changed, so a test (or a second gateway) can undo it."""

    sys_path: list = attrs.field(factory=list)
    plugin_dirs: list = attrs.field(factory=list)

    def undo(self) -> None:
        """Take the added directories off both search paths and forget modules loaded from them."""
        import twisted.plugins

        for entry in self.sys_path:
            if entry in sys.path:
                sys.path.remove(entry)
        for entry in self.plugin_dirs:
            if entry in twisted.plugins.__path__:
                twisted.plugins.__path__.remove(entry)
        roots = tuple(os.path.join(p, "") for p in self.sys_path)
        for name, module in list(sys.modules.items()):
            location = getattr(module, "__file__", None) or ""
            if roots and location.startswith(roots):
                del sys.modules[name]
        importlib.invalidate_caches()
        self.sys_path.clear()
        self.plugin_dirs.clear()


def add_plugin_paths(paths: Iterable[str]) -> PluginSearchPath:
    """Put each directory (already checked) on ``sys.path`` and its ``twisted/plugins`` on the plugin path."""
    import twisted.plugins

    added = PluginSearchPath()
    for path in paths:
        if path not in sys.path:
            sys.path.insert(0, path)
            added.sys_path.append(path)
        plugins = os.path.join(path, "twisted", "plugins")
        if plugins not in twisted.plugins.__path__:
            twisted.plugins.__path__.append(plugins)
            added.plugin_dirs.append(plugins)
    importlib.invalidate_caches()
    return added


def broken_plugin_modules(package: Optional[Any] = None) -> dict[str, str]:
    """
    ``{module: "ExceptionType: message"}`` for every module in the plugin directories that does
    not import.  ``getCache`` records only the modules it could import, so the others are
    imported once more here to capture their error.
    """
    if package is None:
        import twisted.plugins

        package = twisted.plugins
    assert package is not None
    return import_failures(uncached_plugin_modules(package, getCache(package)))


def uncached_plugin_modules(package: Any, cache: Mapping[str, Any]) -> list[str]:
    """
    Full names of the modules in ``package``'s plugin directories missing from ``cache`` (what
    ``getCache(package)`` returned): it records only the modules it could import, so these are
    the suspects.
    """
    names = []
    for module in getModule(package.__name__).iterModules():
        short = module.name.rpartition(".")[2]
        if short not in cache:
            names.append(f"{package.__name__}.{short}")
    return names


def import_failures(module_names: Iterable[str]) -> dict[str, str]:
    """
    Import each module (in the order given) and return ``{module: "ExceptionType: message"}``
    for those that fail.  A plugin file may raise anything, even SystemExit, and all of it is
    recorded; only KeyboardInterrupt still stops the process.
    """
    failures = {}
    for name in module_names:
        try:
            importlib.import_module(name)
        except BaseException as e:  # a plugin file may raise anything, even SystemExit
            if isinstance(e, KeyboardInterrupt):
                raise
            failures[name] = f"{type(e).__name__}: {e}"
    return failures


__all__ = ["add_plugin_paths", "PluginSearchPath", "broken_plugin_modules", "uncached_plugin_modules", "import_failures"]
