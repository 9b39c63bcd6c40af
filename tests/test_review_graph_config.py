"""
Review: graph.https_proxy with credentials.  The proxy password must never be echoed in a
configuration error, and credentials in the URL are refused at start-up: the CONNECT tunnel
Graph traffic uses never sends them, so they would only produce endless 407 retries.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError
from gateway.config.graph import parse_graph_section
from gateway.config.reader import TableReader

PASSWORD = "proxy-pw-never-shown"


def parse(**extra):
    table = {"tenant_id": "contoso.onmicrosoft.com", "client_id": "app-id", "client_secret": "s"}
    table.update(extra)
    return parse_graph_section(TableReader(table, "graph"), {}, os.path.abspath)


class ProxyCredentialTests(SynchronousTestCase):
    def test_wrong_scheme_error_does_not_echo_the_password(self):
        error = self.assertRaises(ConfigError, parse, https_proxy=f"https://user:{PASSWORD}@proxy.test:8080")
        self.assertNotIn(PASSWORD, str(error))
        self.assertIn("https_proxy", str(error))

    def test_credentials_in_the_proxy_url_are_refused_without_echo(self):
        error = self.assertRaises(ConfigError, parse, https_proxy=f"http://user:{PASSWORD}@proxy.test:3128")
        self.assertNotIn(PASSWORD, str(error))
        self.assertIn("https_proxy", str(error))

    def test_plain_proxy_still_accepted(self):
        self.assertEqual(parse(https_proxy="http://proxy.test:3128").https_proxy, "http://proxy.test:3128")
