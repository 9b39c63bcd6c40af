"""
``gateway.plugin`` is the one public module for plugin authors (issue 15): every documented
name is there, stays there (this list is the promise: removing a name fails here), is named in
the module's docstring, and a plugin written against it alone works.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import gateway.plugin

# The stability promise of gateway.plugin's docstring, frozen: a name may be added to
# gateway.plugin.__all__, never silently removed from it.
DOCUMENTED = {
    "IPlugin", "IPolicyFactory", "IPolicy", "IDeliveryObserverFactory", "IDeliveryObserver",
    "Continue", "CONTINUE", "Accept", "Reject", "TempFail", "EditHeaders", "HeaderEdit", "Verdict",
    "SessionView", "MessageView", "Identity", "PolicyContext", "ObserverContext",
    "Delivered", "Transient", "Permanent",
    "PolicyBase", "PolicyOptions", "Option", "reject_options", "scope_options", "Scope", "PolicyConfigError",
    "message_header", "MessageHeader", "Mailbox", "MailRefusal", "AddressPattern", "parse_patterns",
    "matches_any", "canonical", "mailbox_key", "without_subaddress", "header_text", "is_header_name",
    "format_address", "client_ip",
    "make_session", "make_message", "run_transaction", "start_gateway", "SendResult", "start_redis_server",
}

# Where each name used to be imported from: those paths keep working (re-exports).
OLD_PATHS = {
    "IPolicy": "gateway.policy.interfaces", "IPolicyFactory": "gateway.policy.interfaces",
    "PolicyBase": "gateway.policy.base", "CONTINUE": "gateway.policy.base",
    "PolicyOptions": "gateway.policy.options", "Scope": "gateway.policy.options",
    "message_header": "gateway.policy.addresses", "AddressPattern": "gateway.policy.addresses",
    "header_text": "gateway.policy.headers", "format_address": "gateway.policy.headers",
    "IDeliveryObserver": "gateway.delivery.interfaces",
    "IDeliveryObserverFactory": "gateway.delivery.observers",
    "make_session": "gateway.testing.policy", "start_gateway": "gateway.testing.harness",
}


class PublicNamesTests(SynchronousTestCase):
    def test_no_documented_name_disappears(self):
        missing = DOCUMENTED - set(gateway.plugin.__all__)
        self.assertEqual(missing, set(), "documented names removed from gateway.plugin.__all__")

    def test_every_public_name_resolves(self):
        for name in gateway.plugin.__all__:
            self.assertIsNotNone(getattr(gateway.plugin, name), name)

    def test_every_public_name_is_described_in_the_docstring(self):
        doc = gateway.plugin.__doc__
        for name in gateway.plugin.__all__:
            self.assertIn(f"``{name}``", doc, name)
        self.assertIn("Stability promise", doc)

    def test_old_import_paths_are_the_same_objects(self):
        for name, module in OLD_PATHS.items():
            self.assertIs(getattr(importlib.import_module(module), name), getattr(gateway.plugin, name), name)

    def test_undocumented_name_is_an_attribute_error(self):
        with self.assertRaises(AttributeError):
            gateway.plugin.build_components  # noqa: B018

    def test_importing_it_does_not_pull_in_the_testing_harness(self):
        """Plugin modules import gateway.plugin at discovery: it must stay cheap."""
        code = "import sys, gateway.plugin; print('gateway.testing.harness' in sys.modules, 'gateway.wiring' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        self.assertEqual(out.split(), ["False", "False"])
