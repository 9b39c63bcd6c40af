"""graphsmtp-config: a configuration can be checked before a restart, and plugins listed."""

from __future__ import annotations

import io
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli.configcheck import main


class ConfigCheckTests(SynchronousTestCase):
    def run_main(self, *argv):
        out = io.StringIO()
        return main(list(argv), out), out.getvalue()

    def test_good_file_is_summarised(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = "{os.path.abspath(self.mktemp())}"\n'
                    '[[listener]]\nname = "mx"\nendpoint = "tcp:2525"\ntrusted_networks = ["10.0.0.0/8"]\n')
        code, out = self.run_main("check", path)
        self.assertEqual(code, 0)
        self.assertIn("OK", out)
        self.assertIn("listener mx", out)
        self.assertIn("trusted=10.0.0.0/8", out)
        self.assertIn("nothing is sent", out)

    def test_bad_file_names_the_key(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[[listener]]\nname = "mx"\nendpoint = "tcp:2525"\npolicies = [{ use = "no-such-policy" }]\n')
        code, out = self.run_main("check", path)
        self.assertEqual(code, 78)  # EX_CONFIG
        self.assertIn("listener.mx.policies[0].use", out)
        self.assertIn("sender-allowlist", out)  # the available names are listed

    def test_policies_are_listed_with_descriptions(self):
        code, out = self.run_main("policies")
        self.assertIn("rate-limit", out)
        self.assertIn("header-rewrite", out)
