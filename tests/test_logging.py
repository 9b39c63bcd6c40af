"""
Readable logs (issue 9): JSON lines with rendered text and message fields, Postfix-style
per-message text lines, debug off unless ``GRAPHSMTP_LOG_LEVEL`` asks for it — in process and
under a real ``twistd -n graphsmtp`` delivering into the fake Graph.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.logging import (
    LoggingRoot,
    event_as_json,
    json_observer,
    log_level,
    message_fields_text,
    text_observer_for,
    with_message_fields,
)
from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.harness import send_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class JsonObserverTests(SynchronousTestCase):
    def emit(self, environ=None, level="info", **fields):
        out = io.StringIO()
        log = Logger(namespace="gateway.spool.runner", observer=json_observer(out, environ or {}))
        getattr(log, level)("delivered {queue_id}", **fields)
        return out.getvalue()

    def test_one_json_object_per_line_with_rendered_text_and_fields(self):
        out = self.emit(queue_id="Q1", **{"from": "a@corp.example", "to": ("b@corp.example", "c@corp.example")},
                        size=1234, mailbox="a@corp.example", status="sent", attempt=1, delay=0.75,
                        reason="graph sendMail via a@corp.example")
        self.assertFalse(out.startswith("\x1e"))
        [line] = out.splitlines()
        record = json.loads(line)
        self.assertRegex(record["time"], ISO_UTC)
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["system"], "gateway.spool.runner")
        self.assertEqual(record["text"], "delivered Q1")
        self.assertEqual(record["to"], ["b@corp.example", "c@corp.example"])
        for key, value in (("queue_id", "Q1"), ("from", "a@corp.example"), ("size", 1234), ("status", "sent"),
                           ("attempt", 1), ("delay", 0.75), ("mailbox", "a@corp.example")):
            self.assertEqual(record[key], value)
        self.assertFalse([k for k in record if k.startswith("log_")])
        self.assertLess(len(line), 500)

    def test_no_secrets_and_no_objects(self):
        out = self.emit(queue_id="Q2", client_secret="s3cr3t-value", password="hunter2", token="eyJ.abc",
                        thing=object(), nested={"authorization": "Bearer x", "ok": 1})
        record = json.loads(out)
        self.assertNotIn("s3cr3t-value", out)
        self.assertNotIn("hunter2", out)
        self.assertNotIn("eyJ.abc", out)
        self.assertNotIn("Bearer", out)
        self.assertNotIn("thing", record)
        self.assertEqual(record["nested"], {"ok": 1})

    def test_failure_is_text_not_an_object(self):
        out = io.StringIO()
        log = Logger(namespace="x", observer=json_observer(out, {}))
        try:
            raise ZeroDivisionError
        except ZeroDivisionError:
            log.failure("it broke for {queue_id}", Failure(), queue_id="Q3")
        record = json.loads(out.getvalue())
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["text"], "it broke for Q3")
        self.assertIn("ZeroDivisionError", record["error"])
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_debug_is_off_unless_asked_for(self):
        self.assertEqual(self.emit(level="debug", queue_id="Q4"), "")
        self.assertEqual(len(self.emit({"GRAPHSMTP_LOG_LEVEL": "debug"}, level="debug", queue_id="Q4").splitlines()), 1)
        self.assertEqual(self.emit({"GRAPHSMTP_LOG_LEVEL": "warn"}, level="info", queue_id="Q4"), "")

    def test_level_names(self):
        self.assertEqual(log_level({}).name, "info")
        self.assertEqual(log_level({"GRAPHSMTP_LOG_LEVEL": "DEBUG"}).name, "debug")
        self.assertEqual(log_level({"GRAPHSMTP_LOG_LEVEL": "warning"}).name, "warn")
        self.assertEqual(log_level({"GRAPHSMTP_LOG_LEVEL": "nonsense"}).name, "info")

    def test_event_as_json_is_jsonable_for_legacy_events(self):
        record = event_as_json({"message": ("hello", "world"), "isError": 0, "system": "-", "log_time": 0.0})
        json.dumps(record)
        self.assertEqual(record["time"], "1970-01-01T00:00:00.000Z")


class TextFieldsTests(SynchronousTestCase):
    def test_postfix_style_fields(self):
        event = {"log_format": "{queue_id}: delivered", "queue_id": "Q1", "from": "a@corp.example",
                 "to": ["b@corp.example"], "size": 1234, "mailbox": "a@corp.example", "delay": 1.5,
                 "attempt": 1, "status": "sent"}
        self.assertEqual(message_fields_text(event),
                         "from=<a@corp.example>, to=<b@corp.example>, size=1234, relay=graph, "
                         "mailbox=a@corp.example, delay=1.5, attempt=1, status=sent")
        seen = []
        with_message_fields(seen.append)(event)
        self.assertEqual(formatEvent(seen[0]), "Q1: delivered: " + message_fields_text(event))

    def test_fields_the_text_shows_are_not_repeated_and_null_sender_is_shown(self):
        event = {"log_format": "{queue_id} status={status}", "queue_id": "Q1", "status": "deferred",
                 "from": "", "to": "b@corp.example", "reason": "token endpoint unreachable {x}"}
        self.assertEqual(message_fields_text(event), "from=<>, to=<b@corp.example>, (token endpoint unreachable {x})")
        seen = []
        with_message_fields(seen.append)(event)
        self.assertIn("{x}", formatEvent(seen[0]))

    def test_other_events_unchanged(self):
        self.assertEqual(message_fields_text({"log_format": "hello", "queue_id": "Q"}), "")

    def test_text_observer_filters_debug(self):
        seen = []
        observer = text_observer_for(seen.append, {})
        Logger(observer=observer).debug("noise")
        Logger(observer=observer).info("signal")
        self.assertEqual([formatEvent(e) for e in seen], ["signal"])

    def test_logging_root_installs_the_observer_once(self):
        from twisted.application.service import Application, IService, Service
        from twisted.logger import ILogObserver

        application = Application("t")
        LoggingRoot(Service(), lambda: text_observer_for(lambda e: None, {})).setServiceParent(application)
        self.assertTrue(ILogObserver.providedBy(application.getComponent(ILogObserver)))
        self.assertEqual(len(list(IService(application))), 1)


class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.waiters = []
        self.ended = Deferred()

    def outReceived(self, data):
        self.out += data
        self.errReceived(b"")

    def errReceived(self, data):
        self.out += data
        for waiter in list(self.waiters):
            pattern, d = waiter
            match = re.search(pattern, self.out)
            if match:
                self.waiters.remove(waiter)
                d.callback(match)

    def wait_for(self, pattern: bytes) -> Deferred:
        d = Deferred()
        self.waiters.append((pattern, d))
        self.errReceived(b"")
        return d

    def processEnded(self, reason):
        for _, d in self.waiters:
            d.errback(AssertionError(f"twistd ended before the expected line; output:\n{self.out.decode(errors='replace')}"))
        self.waiters = []
        self.ended.callback(None)


class TwistdLogTests(TestCase):
    """A real ``twistd -n graphsmtp`` delivering through the fake Graph; its log read from stdout."""

    timeout = 90

    @inlineCallbacks
    def run_daemon(self, extra_args=(), env_extra=None):
        fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(fake.stop)
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f'[gateway]\nstate_dir = {json.dumps(os.path.abspath(self.mktemp()))}\nhostname = "gw.test"\n'
                    '[[listener]]\nname = "local"\nendpoint = "tcp:0:interface=127.0.0.1"\n'
                    'trusted_networks = ["127.0.0.1/32"]\n'
                    f'[graph]\ntenant_id = "{fake.tenant_id}"\nclient_id = "{fake.client_id}"\n'
                    f'client_secret = "{fake.client_secret}"\nauthority = "{fake.authority}"\n'
                    f'graph_url = "{fake.graph_url}"\nca_bundle = {json.dumps(fake.ca_path)}\n')
        env = {k: v for k, v in os.environ.items() if k != "GRAPHSMTP_LOG_LEVEL"}
        env.update(PYTHONPATH=ROOT, **(env_extra or {}))
        proto = _Collect()
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                *extra_args, "graphsmtp", "--config", config]
        process = reactor.spawnProcess(proto, sys.executable, argv, env=env, path=ROOT)

        def stop():
            if proto.ended.called:
                return None
            process.signalProcess(signal.SIGTERM)
            return proto.ended

        self.addCleanup(stop)
        match = yield proto.wait_for(rb"accepting SMTP on 127\.0\.0\.1 port (\d+)")
        port = int(match.group(1))
        code, _ = yield send_message(port, "printer@corp.example", ["boss@corp.example"],
                                     b"From: printer@corp.example\r\nTo: boss@corp.example\r\nSubject: s\r\n\r\nx\r\n")
        self.assertEqual(code, 250)
        yield proto.wait_for(rb"delivered \w+")
        yield stop()
        self.assertEqual(len(fake.sent), 1)
        self.assertNotIn(fake.client_secret.encode(), proto.out)
        return proto.out.decode("utf-8", "replace")

    @inlineCallbacks
    def test_text_log_has_no_debug_lines_by_default(self):
        out = yield self.run_daemon()
        self.assertIn("tenant default: ok (Graph token issued)", out)
        self.assertNotIn("#debug]", out)
        self.assertNotIn("graph delivered", out)  # the deliverer's debug line

    @inlineCallbacks
    def test_debug_lines_when_asked_for(self):
        out = yield self.run_daemon(env_extra={"GRAPHSMTP_LOG_LEVEL": "debug"})
        self.assertIn("#debug]", out)

    @inlineCallbacks
    def test_json_log_lines(self):
        out = yield self.run_daemon(extra_args=("--logger", "gateway.logging.json_observer"))
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        self.assertTrue(records)
        for record in records:
            self.assertRegex(record["time"], ISO_UTC)
            self.assertIn(record["level"], ("info", "warn", "error", "critical"))
            self.assertIn("text", record)
            self.assertFalse([k for k in record if k.startswith("log_")])
        delivered = [r for r in records if r["text"].startswith("delivered ")]
        self.assertEqual(len(delivered), 1)
        self.assertTrue(delivered[0]["queue_id"])


class JsonLinesAreRenderedTests(SynchronousTestCase):
    """``--logger gateway.logging.json_observer`` once wrote Twisted's raw event serialisation."""

    def test_json_lines_carry_rendered_text_not_twisted_serialisation(self):
        out = io.StringIO()
        Logger(namespace="gateway.spool.runner", observer=json_observer(out)).info(
            "delivered {queue_id}", queue_id="Q1", status="sent")
        [line] = out.getvalue().splitlines()
        self.assertFalse(line.startswith("\x1e"))
        record = json.loads(line)
        self.assertEqual(record.get("text"), "delivered Q1")
        self.assertEqual((record.get("queue_id"), record.get("status")), ("Q1", "sent"))
        self.assertFalse([k for k in record if k.startswith("log_")], record)
