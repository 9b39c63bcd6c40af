"""
Review: the policy example commented in etc/graphsmtp.toml must work once uncommented, as an
admin would use it (it used to name an option sender-allowlist does not have).
"""

from __future__ import annotations

import os
import re
import tomllib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.loader import build_config
from gateway.policy.registry import build_listener_chains
from gateway.policy.testing import make_session, run_transaction

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")


class AnnotatedExampleTests(SynchronousTestCase):
    def test_commented_policies_line_works_when_uncommented(self):
        with open(os.path.join(ETC, "graphsmtp.toml"), encoding="utf-8") as f:
            text = f.read()
        uncommented, count = re.subn(r"(?m)^# (policies = \[.*\])$", r"\1", text)
        self.assertEqual(count, 1, "the commented 'policies = [...]' example is gone")
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        data = tomllib.loads(uncommented)
        data["gateway"]["state_dir"] = base
        config = build_config(data, {}, {}, base)
        chain = build_listener_chains(config, Clock())["local"]
        session = make_session(client_address="127.0.0.1", listener="local")
        ok = self.successResultOf(run_transaction(chain, session, "app@corp.example", ["a@corp.example"]))
        self.assertTrue(ok.allowed)
        refused = self.successResultOf(run_transaction(chain, session, "app@elsewhere.example", ["a@corp.example"]))
        self.assertEqual((refused.step, refused.allowed), ("mail", False))
