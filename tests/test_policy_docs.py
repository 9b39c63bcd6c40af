"""
The configuration shown in docs/writing-policies.md loads and does what the text promises:
"login printer@ may send only as scanner@corp.example, at most 100 messages an hour, with From
rewritten to the shared mailbox".
"""

from __future__ import annotations

import os
import re
import tomllib

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.config.loader import build_config
from gateway.policy.headers import apply_edits
from gateway.policy.interfaces import HeaderEdit, Reject, TempFail
from gateway.policy.registry import build_listener_chains
from gateway.testing.policy import make_message, make_session, run_transaction
from tests.auth_helpers import make_users_file
from tests.test_policy_registry import PluginDirectoryMixin

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
DEVICE_MESSAGE = (
    b"From: HP LaserJet <printer@corp.example>\r\n"
    b"Sender: printer@corp.example\r\n"
    b"To: team@corp.example\r\n"
    b"Subject: Scan\r\n\r\nscan attached\r\n"
)


def documented_toml(marker: str) -> str:
    with open(os.path.join(DOCS, "writing-policies.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(rf"<!-- tested-example: {marker} -->\s*```toml\n(.*?)```", text, re.S)
    assert m, f"example {marker} not found in docs/writing-policies.md"
    return m.group(1)


def printer_config(case):
    base = os.path.abspath(case.mktemp())
    os.makedirs(base)
    make_users_file(os.path.join(base, "users.jsonl"), {
        "printer@corp.example": ("printer password 1234", ["*"]),
        "alice@corp.example": ("alice password 5678", ["*"]),
    })
    return build_config(tomllib.loads(documented_toml("printer")), {}, {}, base)


class PrinterExampleTests(SynchronousTestCase):
    def setUp(self):
        self.config = printer_config(self)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.chain = build_listener_chains(self.config, self.clock)["printers"]
        self.printer = make_session(login="printer@corp.example", listener="printers", tls=True)

    def send(self, sender, session=None):
        return self.successResultOf(run_transaction(self.chain, session or self.printer, sender, ["team@corp.example"], DEVICE_MESSAGE))

    def test_documented_configuration_loads(self):
        (listener,) = self.config.listeners
        self.assertEqual(listener.name, "printers")
        self.assertEqual([p.use for p in listener.policies], ["header-rewrite", "sender-allowlist", "rate-limit"])

    def test_printer_sends_as_the_scanner_mailbox_with_from_rewritten(self):
        result = self.send("scanner@corp.example")
        self.assertEqual((result.step, result.allowed), ("message", True))
        delivered = apply_edits(make_message(DEVICE_MESSAGE).headers, result.result.edits)
        (address,) = delivered["From"].addresses
        self.assertEqual((address.display_name, address.addr_spec), ("HP LaserJet", "scanner@corp.example"))
        self.assertIsNone(delivered["Sender"])

    def test_printer_may_not_send_as_anyone_else(self):
        result = self.send("ceo@corp.example")
        self.assertEqual(result.step, "mail")
        self.assertEqual(result.result.verdict, Reject(550, "5.7.1", "printer@corp.example may only send as scanner@corp.example"))

    def test_at_most_100_messages_an_hour(self):
        for i in range(100):
            self.assertTrue(self.send("scanner@corp.example").allowed, i)
        refused = self.send("scanner@corp.example")
        self.assertEqual(refused.step, "mail")
        self.assertIsInstance(refused.result.verdict, TempFail)
        self.assertEqual((refused.result.verdict.code, refused.result.verdict.status), (451, "4.7.1"))
        self.assertIn("try again in 36 seconds", refused.result.verdict.text)
        self.clock.advance(36)
        self.assertTrue(self.send("scanner@corp.example").allowed)
        self.assertFalse(self.send("scanner@corp.example").allowed)

    def test_refused_senders_do_not_use_up_the_budget(self):
        for _ in range(5):
            self.send("ceo@corp.example")
        for i in range(100):
            self.assertTrue(self.send("scanner@corp.example").allowed, i)

    def test_other_logins_are_neither_limited_nor_rewritten(self):
        alice = make_session(login="alice@corp.example", listener="printers", tls=True)
        for _ in range(101):
            result = self.send("alice@corp.example", alice)
        self.assertTrue(result.allowed)
        self.assertEqual(result.result.edits, ())

    def test_example_plugin_in_docs_is_valid_python_with_a_plugin_object(self):
        namespace: dict = {}
        with open(os.path.join(DOCS, "example_policy.py"), encoding="utf-8") as f:
            exec(compile(f.read(), "example_policy.py", "exec"), namespace)
        factory = namespace["subjectFilter"]
        self.assertEqual(factory.name, "subject-filter")
        policy = factory.build({"words": ["Password Reset"], "tag": "X-Subject-Filter"}, None)
        blocked = policy.on_message(self.printer, make_message(b"Subject: Your password reset\r\n\r\nx\r\n"))
        self.assertEqual(blocked, Reject(550, "5.7.1", "Subject not allowed"))
        passed = policy.on_message(self.printer, make_message(b"Subject: Scan\r\n\r\nx\r\n"))
        self.assertEqual(passed.edits, (HeaderEdit("replace", "X-Subject-Filter", "passed"),))


# -- the Python snippets of "Writing your own policy": each one runs here -------------------

def python_snippets() -> dict:
    """``{marker: source}`` of every ```python block; a block without a tested-example marker is an error."""
    with open(os.path.join(DOCS, "writing-policies.md"), encoding="utf-8") as f:
        text = f.read()
    snippets = {}
    for m in re.finditer(r"(<!-- tested-example: ([\w-]+) -->\s*)?```python\n(.*?)```", text, re.S):
        assert m.group(2), f"untested python snippet in docs/writing-policies.md:\n{m.group(3)}"
        snippets[m.group(2)] = m.group(3)
    return snippets


class PythonSnippetTests(PluginDirectoryMixin, TestCase):
    timeout = 60

    def setUp(self):
        self.snippets = python_snippets()
        self.write = self.plugin_dir()
        plugin = self.write("mycompany_policies", self.snippets["plugin"])
        self.root = os.path.dirname(os.path.dirname(os.path.dirname(plugin)))

    def run_snippet(self, name):
        namespace = {"__name__": f"docs_{name.replace('-', '_')}", "__file__": os.path.join(self.root, "tests", "test_docs.py")}
        exec(compile(self.snippets[name], f"writing-policies.md:{name}", "exec"), namespace)
        return namespace

    def test_every_snippet_is_tested_and_imports_only_gateway_plugin(self):
        self.assertEqual(set(self.snippets), {"plugin", "unit-test", "gateway-test"})
        for name, source in self.snippets.items():
            imported = re.findall(r"^\s*(?:from|import)\s+(gateway[\w.]*)", source, re.M)
            self.assertEqual(set(imported), {"gateway.plugin"}, name)

    def test_the_page_names_no_internal_module(self):
        with open(os.path.join(DOCS, "writing-policies.md"), encoding="utf-8") as f:
            named = set(re.findall(r"\bgateway\.[a-z_][\w.]*[a-z_]", f.read()))
        self.assertEqual(named, {"gateway.plugin"})

    def test_plugin_snippet_is_found_as_a_plugin(self):
        from gateway.policy.registry import available_policies

        factory = available_policies()["subject-filter"]
        self.assertEqual([o.name for o in factory.options],
                         ["words", "reject_text", "reject_code", "reject_status", "logins", "networks"])

    def test_unit_test_snippet_passes(self):
        namespace = self.run_snippet("unit-test")
        # The snippet's test method, run on this test case (the same assertions, same result).
        namespace["SubjectFilterTests"].test_blocked_subject(self)

    @inlineCallbacks
    def test_gateway_test_snippet_passes(self):
        namespace = self.run_snippet("gateway-test")
        yield namespace["SubjectFilterGatewayTests"].test_refused_at_data_and_delivered_otherwise(self)
