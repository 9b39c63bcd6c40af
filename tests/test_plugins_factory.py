"""
gateway.plugins: one lazy plugin object for policies and observers alike, discovered by the
interface it is given, importing its module only when built or asked for its options.
"""

from __future__ import annotations

import sys

from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.observers import IDeliveryObserverFactory, discover_observers
from gateway.plugins.errors import PolicyConfigError
from gateway.plugins.factory import LazyPluginFactory
from gateway.plugins.options import Option, PluginOptions
from gateway.policy.interfaces import IPolicyFactory
from gateway.policy.interfaces import PolicyConfigError as PolicyModuleError
from gateway.policy.options import PolicyOptions
from gateway.policy.registry import discover_policies


class LazyPluginFactoryTests(SynchronousTestCase):
    def test_provides_the_interface_it_is_given_and_no_other(self):
        policy = LazyPluginFactory(IPolicyFactory, "p", "a policy", "gateway.policy.limits", "build_size_limit")
        observer = LazyPluginFactory(IDeliveryObserverFactory, "o", "an observer", "gateway.delivery.observers")
        self.assertTrue(IPlugin.providedBy(policy) and IPolicyFactory.providedBy(policy))
        self.assertFalse(IDeliveryObserverFactory.providedBy(policy))
        self.assertTrue(IPlugin.providedBy(observer) and IDeliveryObserverFactory.providedBy(observer))
        self.assertFalse(IPolicyFactory.providedBy(observer))

    def test_the_module_is_imported_only_when_built(self):
        name = "gateway_tests_no_such_plugin_module"
        factory = LazyPluginFactory(IPolicyFactory, "lazy", "never imported", name)
        self.assertNotIn(name, sys.modules)
        self.assertRaises(ModuleNotFoundError, factory.build, {}, None)

    def test_built_ins_of_both_kinds_are_the_one_factory(self):
        self.assertIsInstance(discover_policies().plugins["sender-allowlist"], LazyPluginFactory)
        self.assertIsInstance(discover_observers().plugins["json-log"], LazyPluginFactory)

    def test_options_come_from_the_module(self):
        factory = discover_policies().plugins["rate-limit"]
        self.assertIn("messages", [option.name for option in factory.options])
        self.assertTrue(all(isinstance(option, Option) for option in factory.options))


class PluginOptionsTests(SynchronousTestCase):
    def test_one_error_class_for_every_plugin(self):
        self.assertIs(PolicyModuleError, PolicyConfigError)

    def test_policy_options_are_plugin_options(self):
        self.assertTrue(issubclass(PolicyOptions, PluginOptions))

    def test_misspelt_option_names_the_nearest(self):
        options = PluginOptions({"pathh": "x"}, declared=[Option("path", "string", None, "the file")])
        options.string("path")
        error = self.assertRaises(PolicyConfigError, options.finish)
        self.assertEqual(error.option, "pathh")
        self.assertIn("did you mean 'path'?", str(error))
