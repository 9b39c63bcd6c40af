"""Delivery observers: the json-log observer, the guard around every observer, and building them from configuration."""

from __future__ import annotations

import json
import os
import stat

from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigError
from gateway.config.loader import build_config
from gateway.delivery.interfaces import (
    Delivered,
    IDeliveryObserver,
    Permanent,
    Transient,
)
from gateway.delivery.observers import (
    GuardedObserver,
    JsonDeliveryLog,
    ObserversService,
    build_observers,
    discover_observers,
)
from gateway.spool.entry import Envelope, Provenance, SpoolEntry

ENTRY = SpoolEntry(
    queue_id="Q1234",
    envelope=Envelope("scanner@corp.example", ("a@corp.example", "b@corp.example")),
    provenance=Provenance("10.1.2.3", "scanner.lan", "submission", tls=True, auth_identity="printer@corp.example"),
    received_at=1_700_000_000.0,
    message_path="/spool/Q1234",
    size=2048,
    attempts=2,
)


class JsonLogTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_123.5)
        self.path = os.path.abspath(self.mktemp())

    def lines(self):
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def test_one_json_line_per_outcome(self):
        log = JsonDeliveryLog(self.path, self.clock)
        log.delivered(ENTRY, Delivered("202 Accepted"))
        log.deferred(ENTRY, Transient("Graph throttled", retry_at=1_700_000_183.5, possibly_delivered=True))
        log.failed(ENTRY, Permanent("Send-as denied", status="5.7.60", remote_code="ErrorSendAsDenied"))
        log.close()
        delivered, deferred, failed = self.lines()
        self.assertEqual(delivered, {
            "time": "2023-11-14T22:15:23.500Z", "queue_id": "Q1234", "outcome": "delivered",
            "sender": "scanner@corp.example", "recipients": 2, "reason": "202 Accepted", "attempts": 2,
            "size": 2048, "listener": "submission", "auth_identity": "printer@corp.example",
        })
        self.assertEqual((deferred["outcome"], deferred["reason"], deferred["retry_at"], deferred["possibly_delivered"]),
                         ("deferred", "Graph throttled", "2023-11-14T22:16:23.500Z", True))
        self.assertEqual((failed["outcome"], failed["status"], failed["remote_code"]), ("failed", "5.7.60", "ErrorSendAsDenied"))

    def test_recipient_list_on_request_and_non_ascii_reason(self):
        log = JsonDeliveryLog(self.path, self.clock, recipients="list")
        log.failed(ENTRY, Permanent("Empfänger unbekannt", status="5.1.1"))
        log.close()
        (line,) = self.lines()
        self.assertEqual(line["recipients"], ["a@corp.example", "b@corp.example"])
        self.assertEqual(line["reason"], "Empfänger unbekannt")

    def test_appends_to_an_existing_file_with_private_mode(self):
        with open(self.path, "w") as f:
            f.write('{"earlier": true}\n')
        log = JsonDeliveryLog(self.path, self.clock)
        log.delivered(ENTRY, Delivered())
        log.close()
        self.assertEqual(len(self.lines()), 2)
        fresh = self.path + ".new"
        log = JsonDeliveryLog(fresh, self.clock)
        log.open()
        log.close()
        # Readable by its group at most: the log names people.
        self.assertEqual(stat.S_IMODE(os.stat(fresh).st_mode) & 0o037, 0)


class Exploding:
    def delivered(self, entry, outcome):
        raise RuntimeError("observer bug")

    def deferred(self, entry, outcome):
        return fail(ValueError("webhook down"))

    def failed(self, entry, outcome):
        self.called = True


class GuardTests(SynchronousTestCase):
    def test_exceptions_and_failed_deferreds_are_logged_not_raised(self):
        inner = Exploding()
        guarded = GuardedObserver(inner, "exploding")
        self.assertTrue(IDeliveryObserver.providedBy(guarded))
        self.assertIsNone(guarded.delivered(ENTRY, Delivered()))
        self.assertIsNone(guarded.deferred(ENTRY, Transient("x")))
        guarded.failed(ENTRY, Permanent("x"))
        self.assertTrue(inner.called)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_write_error_in_json_log_does_not_escape(self):
        log = JsonDeliveryLog(os.path.join(os.path.abspath(self.mktemp()), "missing-dir", "log.jsonl"), Clock())
        GuardedObserver(log, "json-log").delivered(ENTRY, Delivered())
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)


class BuildObserversTests(SynchronousTestCase):
    def config(self, observers, base_dir):
        return build_config({"observer": observers}, {}, {}, base_dir)

    def test_json_log_is_a_discovered_plugin(self):
        self.assertIn("json-log", discover_observers().plugins)

    def test_configured_observer_writes_relative_to_the_configuration(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(base, "logs"))
        config = self.config([{"use": "json-log", "path": "logs/delivery.jsonl", "recipients": "list"}], base)
        clock = Clock()
        observers = build_observers(config.observers, clock)
        service = ObserversService(observers)
        service.startService()
        self.assertTrue(os.path.exists(os.path.join(base, "logs", "delivery.jsonl")), "opened at start-up")
        observers[0].delivered(ENTRY, Delivered())
        service.stopService()
        with open(os.path.join(base, "logs", "delivery.jsonl")) as f:
            self.assertEqual(json.loads(f.read())["recipients"], ["a@corp.example", "b@corp.example"])

    def test_configuration_errors_name_the_entry_and_option(self):
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        for observers, key, text in [
            ([{"use": "jsonlog", "path": "x"}], "observer[0].use", "available: json-log"),
            ([{"use": "json-log"}], "observer[0].path", "is required"),
            ([{"use": "json-log", "path": "x", "recipients": "all"}], "observer[0].recipients", "must be one of"),
            ([{"use": "json-log", "path": "no/such/dir/x"}], "observer[0].path", "does not exist"),
            ([{"use": "json-log", "path": "x"}, {"use": "json-log", "path": "y", "colour": 1}], "observer[1].colour", "unknown"),
        ]:
            e = self.assertRaises(ConfigError, build_observers, self.config(observers, base).observers, Clock())
            self.assertEqual(e.key, key)
            self.assertIn(text, e.problem)

    def test_malformed_observer_section(self):
        e = self.assertRaises(ConfigError, build_config, {"observer": {"use": "json-log"}}, {}, {}, "/")
        self.assertEqual(e.key, "observer")
        e = self.assertRaises(ConfigError, build_config, {"observer": [{"path": "x"}]}, {}, {}, "/")
        self.assertEqual(e.key, "observer[0]")

    def test_no_observers_configured(self):
        self.assertEqual(build_observers(build_config({}, {}, {}, "/").observers, Clock()), [])
