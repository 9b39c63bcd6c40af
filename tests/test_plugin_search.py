"""
The one way a plugin module's import failure is recorded (L{gateway.plugins.search}), shared
by start-up's broken-module report and by discovery's account of a missing plugin.
"""

from __future__ import annotations

import os
import sys
import types

from twisted.trial.unittest import SynchronousTestCase

from gateway.plugins.search import import_failures, uncached_plugin_modules


def package_with(case: SynchronousTestCase, name: str, modules: dict[str, str]) -> types.ModuleType:
    """A throw-away package ``name`` on sys.path holding ``modules`` (short name → source)."""
    root = os.path.abspath(case.mktemp())
    os.makedirs(os.path.join(root, name))
    with open(os.path.join(root, name, "__init__.py"), "w") as f:
        f.write("")
    for short, source in modules.items():
        with open(os.path.join(root, name, short + ".py"), "w") as f:
            f.write(source)
    sys.path.insert(0, root)

    def forget() -> None:
        sys.path.remove(root)
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]
    case.addCleanup(forget)
    return __import__(name)


class ImportFailuresTests(SynchronousTestCase):
    def test_each_failure_is_recorded_as_type_and_message_in_the_order_given(self) -> None:
        package_with(self, "tidyc_pf_a", {
            "exits": "raise SystemExit(3)\n",
            "fine": "VALUE = 1\n",
            "broken": "raise ValueError('half-edited plugin')\n",
        })
        failures = import_failures(["tidyc_pf_a.exits", "tidyc_pf_a.fine", "tidyc_pf_a.broken"])
        self.assertEqual(list(failures.items()), [
            ("tidyc_pf_a.exits", "SystemExit: 3"),
            ("tidyc_pf_a.broken", "ValueError: half-edited plugin"),
        ])

    def test_keyboard_interrupt_still_stops_the_process(self) -> None:
        package_with(self, "tidyc_pf_b", {"interrupted": "raise KeyboardInterrupt\n"})
        self.assertRaises(KeyboardInterrupt, import_failures, ["tidyc_pf_b.interrupted"])


class UncachedModulesTests(SynchronousTestCase):
    def test_modules_missing_from_the_cache_are_the_suspects(self) -> None:
        package = package_with(self, "tidyc_pf_c", {"cached": "", "missing": ""})
        self.assertEqual(uncached_plugin_modules(package, {"cached": object()}), ["tidyc_pf_c.missing"])
