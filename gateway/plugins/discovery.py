"""
Finding named plugins in ``twisted/plugins`` without losing the broken ones (policies and
delivery observers alike: each passes the factory interface it looks for).

``twisted.plugin.getPlugins`` is the discovery mechanism (so third-party plugins are found
exactly like the built-ins), but it only ``log.err``s a plugin module that fails to import and
carries on.  For a security policy chain that is not enough: a policy the admin configured
must never be quietly missing.  So after ``getPlugins`` this module works out which plugin
modules could not be loaded (from the same ``dropin.cache`` data ``getPlugins`` used) and
imports them once more to capture the error, so start-up can say *which file* is broken and
*why* when a configured name cannot be found.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping, Optional

import attrs
from twisted.logger import Logger
from twisted.plugin import getCache, getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from gateway.config.errors import ConfigError
from gateway.plugins.search import import_failures, uncached_plugin_modules

log = Logger()


@attrs.frozen
class Discovery:
    """
    What one scan found.  ``plugins`` maps each name to its plugin; ``conflicts`` lists the
    providers of names claimed by more than one plugin (those names are unusable: which one
    would run is an accident of discovery order); ``broken`` maps plugin module names to the
    error that stopped them loading (or that made their plugin objects invalid).
    """

    kind: str
    plugins: Mapping[str, Any]
    conflicts: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    broken: Mapping[str, str] = attrs.field(factory=dict)

    def resolve(self, name: str, key: str) -> Any:
        """The plugin called ``name``, or a ConfigError for ``key`` that tells the admin what to do."""
        if name in self.conflicts:
            raise ConfigError(
                key,
                f"{self.kind} name {name!r} is provided by more than one plugin "
                f"({', '.join(self.conflicts[name])}); remove or rename one of them",
            )
        plugin = self.plugins.get(name)
        if plugin is not None:
            return plugin
        available = ", ".join(sorted(self.plugins)) or "none"
        problem = f"no {self.kind} plugin is named {name!r}; available: {available}"
        if self.broken:
            failures = "; ".join(f"{module} ({error})" for module, error in sorted(self.broken.items()))
            problem += f". Plugin modules that failed to load, one of which may provide it: {failures}"
        raise ConfigError(key, problem)


def describe(plugin: Any) -> str:
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def discover(interface: Any, kind: str, package: Optional[ModuleType] = None) -> Discovery:
    """
    Scan ``package`` (default ``twisted.plugins``) for plugins providing ``interface`` that
    have a ``name``.  ``kind`` ("policy", "observer") is used in messages.
    """
    if package is None:
        import twisted.plugins

        package = twisted.plugins
    plugins: dict[str, Any] = {}
    providers: dict[str, list[str]] = {}
    broken: dict[str, str] = {}
    for plugin in getPlugins(interface, package):
        try:
            verifyObject(interface, plugin)
        except Invalid as e:
            broken[describe(plugin)] = f"does not provide {interface.__name__}: {e}"
            continue
        name = getattr(plugin, "name", None)
        if not isinstance(name, str) or not name:
            broken[describe(plugin)] = "has no name"
            continue
        if name in plugins and plugins[name] is not plugin:
            providers[name].append(describe(plugin))
            continue
        plugins[name] = plugin
        providers[name] = [describe(plugin)]
    broken.update(_unloadable_modules(interface, package))
    for module, error in sorted(broken.items()):
        log.warn("{kind} plugin {module} is unusable: {error}", kind=kind, module=module, error=error)
    conflicts = {name: tuple(p) for name, p in providers.items() if len(p) > 1}
    for name in conflicts:
        del plugins[name]
    return Discovery(kind=kind, plugins=plugins, conflicts=conflicts, broken=broken)


def _unloadable_modules(interface: Any, package: ModuleType) -> dict[str, str]:
    """
    Plugin modules of ``package`` that did not load: those missing from the plugin cache
    (``getCache`` only records modules it could import), and cached ones that are expected to
    provide ``interface`` but fail to import now.
    """
    cache = getCache(package)
    suspects = set(uncached_plugin_modules(package, cache))
    for dropin in cache.values():
        if any(interface in plugin.provided for plugin in dropin.plugins):
            suspects.add(dropin.moduleName)
    return import_failures(sorted(suspects))


__all__ = ["Discovery", "discover", "describe"]
