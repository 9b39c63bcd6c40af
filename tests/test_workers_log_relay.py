"""
A worker's log events reach the main process's log as the line the worker would have written
itself (L{gateway.workers.log_relay}), with ``[worker <pid>]`` in front: held against the
single-process rendering, text and JSON, on every kind of event L{tests.test_logging_prerender}
knows and a few more.
"""

from __future__ import annotations

import copy
import io

from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.logging import event_as_json, json_line, with_message_fields
from gateway.workers.log_relay import relay_observer, relay_record, relayed_event
from tests.test_logging_prerender import EVENTS, Thing, base

PID = 4242

MORE_EVENTS = [
    # A per-message field without a JSON form: shown as ``str`` by the worker's own log.
    base(log_format="{queue_id} deferred", queue_id="Q4", status="deferred", reason=ValueError("Graph said no"),
         mailbox=Thing()),
    base(log_format="{queue_id}: sent as {mailbox}", queue_id="Q5", status="sent", mailbox="m@corp.example",
         **{"to": ("x@corp.example", "y@corp.example"), "from": "s@corp.example"}),
    base(log_format="a secret {client_secret} stays out of the fields", client_secret="hunter2"),
    base(log_format="warned", log_level=LogLevel.warn, log_system="custom-system"),
    base(log_format="debug {n}", log_level=LogLevel.debug, n=1),
]


def text_of(event: dict) -> str:
    """The line the text log writes for ``event`` (the per-message fields observer in front)."""
    lines: list[str] = []
    with_message_fields(lambda e: lines.append(formatEventAsClassicLogText(e) or ""))(event)
    return lines[0] if lines else ""


def relayed(event: dict) -> dict:
    line = relay_record(event)
    assert line.endswith("\n") and "\n" not in line[:-1], line
    result = relayed_event(line[:-1].encode("utf-8"), PID, 1)
    assert result is not None
    return result


def as_worker_line(text: str) -> str:
    """The single-process line with the worker's tag where the relay puts it (before the message)."""
    head, _, message = text.partition("] ")
    return f"{head}] [worker {PID}] {message}"


def rendered_events() -> list:
    """Every event of both lists that renders to some text (an empty event writes no line)."""
    return [e for e in EVENTS + MORE_EVENTS if text_of(copy.copy(e))]


class RelayTests(SynchronousTestCase):
    def test_the_main_process_writes_the_line_the_worker_would_have_written(self):
        for event in rendered_events():
            with self.subTest(event=event.get("log_format")):
                expected = as_worker_line(text_of(copy.copy(event)))
                self.assertEqual(text_of(relayed(copy.copy(event))), expected)

    def test_a_failure_keeps_its_message_and_traceback(self):
        """Twisted's JSON form, relayed before, wrote ``ValueError: {'unpersistable': True}``."""
        try:
            raise ValueError("boom")
        except ValueError:
            event = base(log_format="failed {what}", what="x", log_failure=Failure())
        text = text_of(relayed(copy.copy(event)))
        self.assertEqual(text, as_worker_line(text_of(event)))
        self.assertIn("ValueError: boom", text)
        self.assertEqual(event_as_json(relayed(copy.copy(event)))["error"], "ValueError: boom")

    def test_the_json_log_gets_the_same_object_with_the_workers_pid(self):
        for event in rendered_events():
            with self.subTest(event=event.get("log_format")):
                mine = event_as_json(copy.copy(event))
                theirs = event_as_json(relayed(copy.copy(event)))
                self.assertEqual(theirs.pop("text"), f"[worker {PID}] " + mine.pop("text"))
                self.assertEqual((theirs.pop("worker_pid"), theirs.pop("worker")), (PID, 1))
                # A per-message field without a JSON form comes as its text (it was left out).
                extra = {name: str(event[name]) for name in theirs.keys() - mine.keys()}
                self.assertEqual(theirs, {**mine, **extra})

    def test_secret_named_fields_never_enter_the_pipe(self):
        stream = io.StringIO()
        relay_observer(stream)(base(log_format="login {user}", user="alice", password="hunter2",
                                    client_secret="s3cr3t"))
        self.assertNotIn("hunter2", stream.getvalue())
        self.assertNotIn("s3cr3t", stream.getvalue())
        self.assertIn("login alice", json_line(relayed_event(stream.getvalue().strip().encode(), PID, 1)))

    def test_levels_namespaces_and_systems_survive(self):
        event = relayed(base(log_format="warned", log_level=LogLevel.warn, log_system="custom-system"))
        self.assertIs(event["log_level"], LogLevel.warn)
        self.assertEqual((event["log_namespace"], event["log_system"]), ("gateway.test", "custom-system"))

    def test_garbled_records_are_dropped(self):
        for record in (b"\x1e{not json", b"\x1e[1, 2]", b'\x1e{"log_relayed":1,"fields":[]}', b"\xff\xfe"):
            self.assertIsNone(relayed_event(record, PID, 1), record)
