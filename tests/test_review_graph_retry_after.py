"""
Review: Retry-After in HTTP-date form is always GMT (RFC 9110 §5.6.7), including the obsolete
asctime form that carries no zone; the local time zone of the gateway host must not shift it.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import TestCase

from gateway.delivery.graph.client import parse_retry_after

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


class RetryAfterDateTests(TestCase):
    def setUp(self):
        if not hasattr(time, "tzset"):
            raise self.skipTest("needs time.tzset")
        old = os.environ.get("TZ")

        def restore():
            if old is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)
        os.environ["TZ"] = "America/New_York"
        time.tzset()

    def test_asctime_form_is_gmt(self):
        self.assertEqual(parse_retry_after([b"Tue Nov 14 22:14:50 2023"], NOW), 90.0)

    def test_rfc850_form_is_gmt(self):
        self.assertEqual(parse_retry_after([b"Tuesday, 14-Nov-23 22:14:50 GMT"], NOW), 90.0)

    def test_imf_fixdate(self):
        self.assertEqual(parse_retry_after([b"Tue, 14 Nov 2023 22:14:50 GMT"], NOW), 90.0)
