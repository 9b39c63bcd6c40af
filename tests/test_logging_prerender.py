"""
The text log renders each event's message once, with C{str.format_map} (issue 13, CPU per
accepted message): held against Twisted's own formatter on the same events, the fast path and
every case it must leave to Twisted.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, formatEvent, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.logging import message_fields_text, with_message_fields


class Thing:
    name = "thing"

    def __str__(self) -> str:
        return "<thing>"

    def __repr__(self) -> str:
        return "Thing()"

    def label(self) -> str:
        return "called"


class Dynamic:
    """Answers every attribute, even ``label()``: only the ``()`` guard keeps the call a call."""

    def __getattr__(self, name: str) -> Any:
        return lambda: name


def reference(event: dict) -> dict:
    """What the observer got before pre-rendering: the format untouched, message fields appended."""
    extra = message_fields_text(event)
    if extra:
        event = dict(event)
        event["log_format"] = (event.get("log_format") or "") + ": " + extra.replace("{", "{{").replace("}", "}}")
    return event


def base(**fields: Any) -> dict:
    event = {"log_level": LogLevel.info, "log_namespace": "gateway.test", "log_time": 1_700_000_000.25}
    event.update(fields)
    return event


EVENTS = [
    base(log_format="received {queue_id} from {client} size {size} nrcpt {nrcpt}", queue_id="Q1",
         client="localhost[127.0.0.1]", size=10521, nrcpt=1, tls=False, listener="bench",
         **{"from": "a@example.com", "to": ["b@example.com"]}),
    base(log_format="{queue_id}: delivered", queue_id="Q1", status="sent", mailbox="a@corp.example",
         delay=1.25, attempt=1, **{"from": "", "to": ["b@corp.example"]}),
    base(log_format="{queue_id} deferred: {reason}", queue_id="Q2", status="deferred", reason="busy {x} }{"),
    base(log_format="value {v!r} {v!s} {v!a} {n:>6.2f} {n:d}", v="jörg {}", n=3),
    base(log_format="{thing.name} {thing} {thing!r} {seq[1]} {map[k]}", thing=Thing(), seq=["a", "b"], map={"k": "v"}),
    base(log_format="literal {{braces}} and }} alone"),
    base(log_format="called {thing.label()} and {f()}", thing=Thing(), f=lambda: "f-result"),
    base(log_format="dynamic {d.label()}", d=Dynamic()),
    base(log_format="missing {nothing}"),
    base(log_format="positional {} {0}"),
    base(log_format="bad {spec:Q}", spec=3),
    base(log_format="nested {n:{width}}", n=7, width=5),
    base(log_format=b"bytes {x}", x="y"),
    base(log_format=None, queue_id="Q3", status="sent", **{"from": "a@b", "to": "c@d"}),
    base(),
    base(log_format="failed {what}", what="thing", log_failure=Failure(ValueError("boom"))),
    base(log_format="flattened {x}", x="live", log_flattened={"x!:": "stored"}),
    base(log_format="multi\nline {x}", x="a\nb"),
]


class PrerenderTests(SynchronousTestCase):
    def test_same_text_as_twisted_renders_for_every_kind_of_event(self) -> None:
        for event in EVENTS:
            seen: list[dict] = []
            with_message_fields(seen.append)(dict(event))
            self.assertEqual(formatEventAsClassicLogText(seen[0]), formatEventAsClassicLogText(reference(event)),
                             event.get("log_format"))
            self.assertEqual(formatEvent(seen[0]), formatEvent(reference(event)), event.get("log_format"))

    def test_received_line_reaches_the_observer_rendered(self) -> None:
        """The fast path is taken: the observer's formatter finds no field left to look up."""
        seen: list[dict] = []
        with_message_fields(seen.append)(dict(EVENTS[0]))
        self.assertEqual(seen[0]["log_format"], "received Q1 from localhost[127.0.0.1] size 10521 nrcpt 1")
        self.assertEqual(seen[0]["queue_id"], "Q1")  # the fields stay for other uses

    def test_braces_in_values_are_escaped_once(self) -> None:
        seen: list[dict] = []
        with_message_fields(seen.append)(base(log_format="say {x}", x="{y} }"))
        self.assertEqual(seen[0]["log_format"], "say {{y}} }}")
        self.assertEqual(formatEvent(seen[0]), "say {y} }")

    def test_calls_are_left_to_twisted(self) -> None:
        event = base(log_format="called {f()}", f=lambda: "f-result")
        seen: list[dict] = []
        with_message_fields(seen.append)(event)
        self.assertIs(seen[0], event)

    def test_the_emitted_event_is_not_changed(self) -> None:
        event = dict(EVENTS[1])
        with_message_fields(lambda e: None)(event)
        self.assertEqual(event, EVENTS[1])
