"""
Plugin discovery and chain building: dropped-in plugins are found and enforced, and every way a
configuration can name the wrong thing stops start-up with a message naming the key.
"""

from __future__ import annotations

import os
import sys
import textwrap

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import twisted.plugins
from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.config.model import PolicyRef
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import IPolicyFactory, Reject
from gateway.policy.registry import (
    available_policies,
    build_chain,
    build_listener_chains,
    discover_policies,
)
from gateway.testing.policy import make_session, run_transaction

BUILT_INS = {"sender-allowlist", "recipient-rules", "rate-limit", "header-rewrite", "max-recipients", "size-limit"}

NO_EXTERNAL = '''
"""A dropped-in policy: refuse recipients outside one domain."""
from twisted.plugin import IPlugin
from zope.interface import implementer
from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.interfaces import IPolicyFactory, PolicyConfigError, Reject


class OnlyDomain(PolicyBase):
    def __init__(self, domain):
        self.domain = domain

    def on_rcpt_to(self, session, recipient):
        if recipient.lower().endswith("@" + self.domain):
            return CONTINUE
        return Reject(550, "5.7.1", "Only %s recipients" % self.domain)


@implementer(IPlugin, IPolicyFactory)
class OnlyDomainFactory:
    name = "{name}"
    description = "Recipients of one domain only"

    def build(self, options, context):
        domain = options.get("domain")
        if not isinstance(domain, str):
            raise PolicyConfigError("is required", "domain")
        return OnlyDomain(domain.lower())


onlyDomain = OnlyDomainFactory()
'''


class PluginDirectoryMixin:
    """Write plugin modules into a temporary ``twisted/plugins`` on sys.path, and clean up after."""

    def plugin_dir(self):
        root = os.path.abspath(self.mktemp())
        plugins = os.path.join(root, "twisted", "plugins")
        os.makedirs(plugins)
        sys.path.insert(0, root)
        twisted.plugins.__path__.append(plugins)
        written = []

        def cleanup():
            sys.path.remove(root)
            twisted.plugins.__path__.remove(plugins)
            for name in written:
                sys.modules.pop(f"twisted.plugins.{name}", None)

        self.addCleanup(cleanup)

        def write(name, source, mtime=None):
            path = os.path.join(plugins, f"{name}.py")
            with open(path, "w") as f:
                f.write(textwrap.dedent(source))
            if mtime is not None:
                os.utime(path, (mtime, mtime))
            written.append(name)
            sys.modules.pop(f"twisted.plugins.{name}", None)
            return path

        return write


class DiscoveryTests(PluginDirectoryMixin, SynchronousTestCase):
    def context(self, listener="submission"):
        return PolicyContext(clock=Clock(), listener=listener)

    def test_built_ins_are_discovered_as_plugins(self):
        policies = available_policies()
        self.assertTrue(BUILT_INS <= set(policies), policies)
        for name in BUILT_INS:
            self.assertTrue(IPolicyFactory.providedBy(policies[name]))
            self.assertTrue(policies[name].description)

    def test_dropped_in_plugin_is_discovered_and_enforced(self):
        write = self.plugin_dir()
        write("h5test_only_domain", NO_EXTERNAL.replace("{name}", "only-domain"))
        self.assertIn("only-domain", available_policies())
        chain = build_chain([PolicyRef("only-domain", {"domain": "Corp.Example"})], self.context())
        result = self.successResultOf(run_transaction(chain, make_session(), "a@corp.example", ["b@corp.example", "c@gmail.example"]))
        self.assertEqual(result.accepted_recipients, ("b@corp.example",))
        refused = self.successResultOf(chain.on_rcpt_to(make_session(), "c@gmail.example"))
        self.assertEqual(refused.verdict, Reject(550, "5.7.1", "Only corp.example recipients"))

    def test_chain_keeps_configured_order(self):
        write = self.plugin_dir()
        write("h5test_only_domain", NO_EXTERNAL.replace("{name}", "only-domain"))
        chain = build_chain([
            PolicyRef("recipient-rules", {"deny": ["boss@corp.example"], "reject_text": "first"}),
            PolicyRef("only-domain", {"domain": "corp.example"}),
        ], self.context())
        self.assertEqual([type(p).__name__ for p in chain.policies], ["RecipientRules", "OnlyDomain"])
        self.assertEqual(self.successResultOf(chain.on_rcpt_to(make_session(), "boss@corp.example")).verdict.text, "first")

    def test_unknown_name_lists_available_names_under_the_listener_key(self):
        e = self.assertRaises(ConfigError, build_chain, [
            PolicyRef("rate-limit", {"messages": 5}),
            PolicyRef("sender-alowlist", {}),
        ], self.context())
        self.assertEqual(e.key, "listener.submission.policies[1].use")
        self.assertIn("'sender-alowlist'", e.problem)
        for name in BUILT_INS:
            self.assertIn(name, e.problem)

    def test_broken_plugin_module_is_named_with_its_error(self):
        write = self.plugin_dir()
        write("h5test_broken", "import graphsmtp_no_such_dependency\n")
        e = self.assertRaises(ConfigError, build_chain, [PolicyRef("fancy-policy", {})], self.context())
        self.assertEqual(e.key, "listener.submission.policies[0].use")
        self.assertIn("twisted.plugins.h5test_broken", e.problem)
        self.assertIn("ModuleNotFoundError", e.problem)
        self.assertIn("graphsmtp_no_such_dependency", e.problem)
        # Twisted itself logged the import failure; nothing was silently skipped.
        self.assertTrue(self.flushLoggedErrors(ImportError))

    def test_broken_plugin_does_not_stop_configured_policies_that_exist(self):
        write = self.plugin_dir()
        write("h5test_broken", "raise RuntimeError('plugin exploded')\n")
        discovery = discover_policies()
        self.assertIn("RuntimeError: plugin exploded", discovery.broken["twisted.plugins.h5test_broken"])
        chain = build_chain([PolicyRef("size-limit", {"max": 1000})], self.context(), discovery)
        self.assertEqual(len(chain.policies), 1)
        self.flushLoggedErrors(RuntimeError)

    def test_plugin_broken_after_it_was_cached_is_reported(self):
        """A module that loaded once (and sits in dropin.cache) and then breaks is still reported."""
        write = self.plugin_dir()
        write("h5test_later_broken", NO_EXTERNAL.replace("{name}", "later-broken"), mtime=1_000_000_000)
        self.assertIn("later-broken", available_policies())
        write("h5test_later_broken", "def broken(:\n", mtime=4_000_000_000)
        e = self.assertRaises(ConfigError, build_chain, [PolicyRef("later-broken", {})], self.context())
        self.assertIn("twisted.plugins.h5test_later_broken (SyntaxError", e.problem)
        self.flushLoggedErrors()

    def test_invalid_option_names_policy_and_option(self):
        e = self.assertRaises(ConfigError, build_chain, [
            PolicyRef("size-limit", {"max": 1000}),
            PolicyRef("rate-limit", {"messages": "lots"}),
        ], self.context("printers"))
        self.assertEqual(e.key, "listener.printers.policies[1].messages")
        self.assertIn("policy 'rate-limit'", e.problem)
        self.assertIn("integer", e.problem)

    def test_plugin_option_error_without_option_name(self):
        write = self.plugin_dir()
        write("h5test_only_domain", NO_EXTERNAL.replace("{name}", "only-domain"))
        e = self.assertRaises(ConfigError, build_chain, [PolicyRef("only-domain", {})], self.context())
        self.assertEqual(e.key, "listener.submission.policies[0].domain")
        self.assertEqual(e.problem, "policy 'only-domain': is required")

    def test_unexpected_build_exception_and_non_policy_result(self):
        write = self.plugin_dir()
        write("h5test_bad_factories", '''
            from twisted.plugin import IPlugin
            from zope.interface import implementer
            from gateway.policy.interfaces import IPolicyFactory

            @implementer(IPlugin, IPolicyFactory)
            class Factory:
                def __init__(self, name, result):
                    self.name, self.description, self.result = name, "test", result

                def build(self, options, context):
                    if isinstance(self.result, Exception):
                        raise self.result
                    return self.result

            crashes = Factory("crashes", KeyError("oops"))
            notAPolicy = Factory("not-a-policy", "a string")
        ''')
        e = self.assertRaises(ConfigError, build_chain, [PolicyRef("crashes", {})], self.context())
        self.assertEqual(e.key, "listener.submission.policies[0]")
        self.assertIn("failed to build: KeyError", e.problem)
        e = self.assertRaises(ConfigError, build_chain, [PolicyRef("not-a-policy", {})], self.context())
        self.assertIn("does not provide IPolicy", e.problem)

    def test_name_claimed_twice_is_refused(self):
        write = self.plugin_dir()
        write("h5test_dup_one", NO_EXTERNAL.replace("{name}", "duplicate").replace("OnlyDomainFactory", "FirstFactory"))
        write("h5test_dup_two", NO_EXTERNAL.replace("{name}", "duplicate").replace("OnlyDomainFactory", "SecondFactory"))
        self.assertNotIn("duplicate", available_policies())
        e = self.assertRaises(ConfigError, build_chain, [PolicyRef("duplicate", {"domain": "x"})], self.context())
        self.assertIn("more than one plugin", e.problem)
        self.assertIn("FirstFactory", e.problem)
        self.assertIn("SecondFactory", e.problem)

    def test_a_dropped_in_plugin_cannot_shadow_a_built_in(self):
        write = self.plugin_dir()
        write("h5test_shadow", NO_EXTERNAL.replace("{name}", "sender-allowlist"))
        e = self.assertRaises(ConfigError, build_chain, [PolicyRef("sender-allowlist", {"allow": ["*@x.example"]})], self.context())
        self.assertIn("more than one plugin", e.problem)

    def test_plugin_without_name_is_reported_as_broken(self):
        write = self.plugin_dir()
        write("h5test_nameless", NO_EXTERNAL.replace('name = "{name}"', "name = None"))
        discovery = discover_policies()
        self.assertIn("has no name", discovery.broken.values())

    def test_build_listener_chains_from_configuration(self):
        config = build_config({"listener": [
            {"name": "printers", "endpoint": "tcp:2525:interface=127.0.0.1",
             "policies": [{"use": "recipient-rules", "allow": ["*@corp.example"]}]},
            {"name": "open", "endpoint": "tcp:2526:interface=127.0.0.1"},
        ]}, {}, {}, "/")
        chains = build_listener_chains(config, Clock())
        self.assertEqual(set(chains), {"printers", "open"})
        self.assertEqual(len(chains["printers"].policies), 1)
        self.assertEqual(chains["open"].policies, ())
        e = self.assertRaises(ConfigError, build_listener_chains, build_config({"listener": [
            {"name": "printers", "endpoint": "tcp:2525:interface=127.0.0.1", "policies": [{"use": "nope"}]},
        ]}, {}, {}, "/"), Clock())
        self.assertEqual(e.key, "listener.printers.policies[0].use")
