"""
The plugin object graphsmtp's built-in policies and observers ship in ``twisted/plugins``.

Like twistd's ``ServiceMaker``, it names the module that does the work and imports it only when
the plugin is configured (or its options are listed), so discovery stays cheap and a problem in
one built-in cannot stop the others from being listed.  One class serves every kind of plugin:
the interface it provides (``IPolicyFactory``, ``IDeliveryObserverFactory``) is given per
object, so this module needs neither ``gateway.policy`` nor ``gateway.delivery``.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from twisted.plugin import IPlugin
from zope.interface import directlyProvides
from zope.interface.interface import InterfaceClass


class LazyPluginFactory:
    """
    A plugin providing ``interface`` whose ``build`` is ``function(options, context)`` of
    ``module``, and whose ``options`` (the documented L{gateway.plugins.options.Option}s) are
    ``module``'s ``options_name`` attribute; both imported on first use.
    """

    def __init__(self, interface: InterfaceClass, name: str, description: str, module: str,
                 function: str = "build", options_name: str = "OPTIONS") -> None:
        self.name = name
        self.description = description
        self.module = module
        self.function = function
        self.options_name = options_name
        directlyProvides(self, IPlugin, interface)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, module={self.module!r})"

    def build(self, options: Mapping[str, Any], context: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.function)(options, context)

    @property
    def options(self) -> tuple[Any, ...]:
        """
        The plugin's documented options, declared next to the code that reads them; importing
        the module is fine here, as only ``graphsmtp-config policies`` and the docs generator ask.
        """
        return tuple(getattr(importlib.import_module(self.module), self.options_name, ()))


__all__ = ["LazyPluginFactory"]
