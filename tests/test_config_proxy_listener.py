"""
Configuration of PROXY-protocol listeners (issue 8, finding 6): ``proxy_trusted_networks`` (who
may send a PROXY header; loopback unless set) and ``proxy_header_timeout`` (how long the header
may take), each validated with an error that names its key.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ConfigError
from gateway.config.loader import build_config

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def listener(**options):
    table = {"name": "lb", "endpoint": "haproxy:tcp:2525"}
    table.update(options)
    [result] = build_config({"listener": [table]}, {}, {}, "/base").listeners
    return result


class ProxyListenerConfigTests(SynchronousTestCase):

    def refused(self, **options) -> str:
        return str(self.assertRaises(ConfigError, listener, **options))

    def test_defaults_loopback_and_five_seconds(self):
        config = listener()
        self.assertEqual(config.proxy_trusted_networks, LOOPBACK)
        self.assertEqual(config.proxy_header_timeout, 5.0)

    def test_configured_networks_and_timeout(self):
        config = listener(proxy_trusted_networks=["10.1.0.0/16", "2001:db8::7"], proxy_header_timeout="3s")
        self.assertEqual(config.proxy_trusted_networks, (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8::7/128")))
        self.assertEqual(config.proxy_header_timeout, 3.0)

    def test_flag_form_takes_the_keys_too(self):
        config = listener(endpoint="tcp:2525", proxy_protocol=True, proxy_trusted_networks=["192.0.2.10"])
        self.assertEqual(config.proxy_trusted_networks, (ipaddress.ip_network("192.0.2.10/32"),))

    def test_bad_network(self):
        message = self.refused(proxy_trusted_networks=["10.1.0.0/33"])
        self.assertIn("listener.lb.proxy_trusted_networks", message)
        self.assertIn("'10.1.0.0/33'", message)

    def test_empty_list(self):
        self.assertIn("at least one network", self.refused(proxy_trusted_networks=[]))

    def test_everything_refused(self):
        for everything in ("0.0.0.0/0", "::/0"):
            message = self.refused(proxy_trusted_networks=["127.0.0.1", everything])
            self.assertIn("listener.lb.proxy_trusted_networks", message)
            self.assertIn("any address", message)

    def test_timeout_bounds(self):
        for bad in (0, -1, "121s", "5m"):
            self.assertIn("listener.lb.proxy_header_timeout", self.refused(proxy_header_timeout=bad), bad)
        self.assertEqual(listener(proxy_header_timeout=120).proxy_header_timeout, 120.0)
        self.assertEqual(listener(proxy_header_timeout=0.5).proxy_header_timeout, 0.5)

    def test_keys_refused_on_a_plain_listener(self):
        for key, value in (("proxy_trusted_networks", ["10.0.0.0/8"]), ("proxy_header_timeout", 5)):
            message = self.refused(endpoint="tcp:2525", **{key: value})
            self.assertIn(f"listener.lb.{key}", message)
            self.assertIn("only applies to PROXY-protocol listeners", message)
