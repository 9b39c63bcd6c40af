"""
Every built-in policy declares its options in code (issue 15, "options documented from the
code"): `graphsmtp-config policies` prints them, docs/policies.md is generated from them and
must not be stale, the declarations match what each policy really reads, and a misspelt option
names the nearest valid one.
"""

from __future__ import annotations

import io
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli.configcheck import main as config_main
from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.policy.catalog import builtin_policy_factories, render_markdown
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import PolicyConfigError
from gateway.policy.options import PolicyOptions
from gateway.policy.registry import build_listener_chains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = {
    "header-rewrite": {"subject_tag": "[ext]"},
    "max-recipients": {},
    "rate-limit": {"messages": 5},
    "recipient-rules": {"allow": ["*@corp.example"]},
    "sender-allowlist": {"allow": ["*@corp.example"]},
    "size-limit": {"max": 1000},
}


def run_cli(*argv):
    out = io.StringIO()
    status = config_main(list(argv), out)
    return status, out.getvalue()


class DeclaredOptionsTests(SynchronousTestCase):
    def test_every_builtin_declares_options(self):
        factories = builtin_policy_factories()
        self.assertEqual(sorted(f.name for f in factories), sorted(MINIMAL))
        for factory in factories:
            self.assertTrue(factory.options, factory.name)
            for option in factory.options:
                self.assertTrue(option.help and option.type, (factory.name, option))

    def test_declarations_match_what_each_policy_reads(self):
        """A declared option the code never reads, or one it reads undeclared, fails here."""
        read = []
        original = PolicyOptions.finish

        def recording_finish(options_self):
            read.append(set(options_self._reader.used))
            return original(options_self)

        self.patch(PolicyOptions, "finish", recording_finish)
        for factory in builtin_policy_factories():
            del read[:]
            factory.build(MINIMAL[factory.name], PolicyContext(clock=Clock()))
            self.assertEqual(read, [{o.name for o in factory.options}], factory.name)

    def test_shared_reject_options_are_declared(self):
        by_name = {f.name: {o.name: o for o in f.options} for f in builtin_policy_factories()}
        for name in ("sender-allowlist", "recipient-rules"):
            for option in ("reject_text", "reject_code", "reject_status"):
                self.assertIn(option, by_name[name], name)
        self.assertEqual(by_name["sender-allowlist"]["reject_text"].default, "Sender address not allowed")
        self.assertEqual(by_name["recipient-rules"]["reject_code"].default, "550")

    def test_misspelt_option_names_the_nearest_valid_one(self):
        factory = {f.name: f for f in builtin_policy_factories()}["rate-limit"]
        with self.assertRaises(PolicyConfigError) as caught:
            factory.build({"messages": 5, "ipv6_prefx": 48}, PolicyContext(clock=Clock()))
        self.assertEqual(caught.exception.option, "ipv6_prefx")
        self.assertIn("did you mean 'ipv6_prefix'?", str(caught.exception))
        self.assertIn("fail_open", str(caught.exception))

    def test_misspelt_reject_option_through_the_configuration(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        config = build_config({"listener": [{
            "name": "relay", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.1/32"],
            "policies": [{"use": "recipient-rules", "allow": ["*@corp.example"], "reject_txt": "No"}],
        }]}, {}, {}, base)
        with self.assertRaises(ConfigError) as caught:
            build_listener_chains(config, Clock())
        message = str(caught.exception)
        self.assertIn("listener.relay.policies[0].reject_txt", message)
        self.assertIn("did you mean 'reject_text'?", message)

    def test_nothing_close_lists_the_valid_options(self):
        with self.assertRaises(PolicyConfigError) as caught:
            PolicyOptions({"zzz": 1}).finish()
        self.assertNotIn("did you mean", str(caught.exception))


class CatalogueTests(SynchronousTestCase):
    def test_config_policies_prints_every_option_of_every_policy(self):
        status, out = run_cli("policies")
        self.assertEqual(status, 0, out)
        for factory in builtin_policy_factories():
            self.assertIn(factory.name, out)
            block = out.split(factory.name, 1)[1]
            for option in factory.options:
                self.assertIn(f"    {option.name} ({option.type}", block, (factory.name, option.name))
                self.assertIn(option.help, block)

    def test_docs_policies_md_is_generated_and_not_stale(self):
        path = os.path.join(ROOT, "docs", "policies.md")
        with open(path, encoding="utf-8") as f:
            committed = f.read()
        self.assertEqual(
            committed, render_markdown(builtin_policy_factories()),
            "docs/policies.md is stale: regenerate it with `graphsmtp-config policies --markdown > docs/policies.md`",
        )

    def test_markdown_option_matches_the_generator(self):
        status, out = run_cli("policies", "--markdown")
        self.assertEqual(status, 0)
        self.assertEqual(out, render_markdown(builtin_policy_factories()))
        self.assertIn("| `reject_status` | string | 5.7.1 |", out)
