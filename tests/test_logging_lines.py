"""
The log's lines made without Twisted's Python formatter (issue 13, CPU per accepted message):
L{ClassicLines} against Twisted's classic text line and L{JsonLines} against L{json_line}, on
the same events, with times at every rounding edge of a second; and twistd's own text
observer really given the fast formatter.
"""

from __future__ import annotations

import io
import json
import math
import random
from typing import Any, Callable

from twisted.logger import FileLogObserver, LogLevel, formatEvent, formatEventAsClassicLogText, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.logging import (
    ClassicLines,
    JsonLines,
    PerSecond,
    event_as_json,
    json_line,
    text_observer_for,
    twistd_default_observer,
    with_message_fields,
)
from gateway.testing.timezone import local_time_zone
from tests.test_logging_prerender import EVENTS, base

#: Around one second: exact, half a microsecond either side of rounding up, just before the next.
EDGES = [0.0, 0.0000004999, 0.0000005, 0.25, 0.4999995, 0.9999994999, 0.9999995, 0.99999951, 0.9999999999]


def times() -> list[Any]:
    start = 1_700_000_000
    chosen = [start + second + edge for second in range(3) for edge in EDGES]
    rng = random.Random(13)
    chosen += [start + rng.random() * 5 for _ in range(500)]
    # Not floats, or not after 1970: the slow path, as Twisted writes them.
    return chosen + [start, -1.5, -0.0000001, None]


#: Times the per-second text cannot write: before 1970 by less than a second (``int()`` rounds
#: them up to 1970), not a number, infinite.
ODD_TIMES = [-0.5, -0.9999, -0.0000006, -1e-300, math.nan, math.inf, -math.inf, 1e300]


def outcome(write: Callable[[], Any]) -> Any:
    """What ``write()`` gives, or the exception it raises (type and message)."""
    try:
        return write()
    except Exception as e:  # noqa: BLE001 - compared, not handled
        return (type(e), str(e))


def twisted_text(event: dict) -> str:
    """The JSON line's ``text`` as the JSON observer wrote it with Twisted's formatter."""
    text = formatEvent(dict(event))
    if not text and "message" in event:
        text = " ".join(str(m) for m in event.get("message") or ())
    return text.replace("\r", "\\r").replace("\n", "\\n")


def twisted_line(event: dict) -> Any:
    """What twistd's text observer writes for ``event``."""
    out = io.StringIO()
    textFileLogObserver(out)(event)
    return out.getvalue()


def fast_line(event: dict) -> Any:
    out = io.StringIO()
    FileLogObserver(out, ClassicLines())(event)
    return out.getvalue()


class ClassicLinesTests(SynchronousTestCase):
    def test_same_line_as_twisted_for_every_kind_of_event(self) -> None:
        failure = Failure(ValueError("boom"))
        extra = [
            base(log_format="in a system {x}", x=1, log_system="vm[127.0.0.1]"),
            base(log_format="no level", log_level=None),
            base(log_format="no namespace", log_namespace=None),
            {"log_format": "nothing else"},
            base(log_format="", queue_id="Q"),
            base(log_format="failure {x}", x=1, log_failure=failure),
            base(log_format="system\nacross lines", log_system="a\nb"),
        ]
        for event in EVENTS + extra:
            for rendered in (dict(event), *self._through_fields(event)):
                self.assertEqual(fast_line(rendered), twisted_line(rendered), rendered.get("log_format"))

    def test_same_time_as_twisted_at_every_edge_of_a_second(self) -> None:
        lines = ClassicLines()
        for when in times():
            event = base(log_format="at {when}", when=when, log_time=when)
            self.assertEqual(lines(event), formatEventAsClassicLogText(event), repr(when))

    def test_same_time_or_error_as_twisted_for_odd_times(self) -> None:
        lines = ClassicLines()
        for when in ODD_TIMES:
            event = base(log_format="at {x}", x=1, log_time=when)
            self.assertEqual(outcome(lambda e=event: lines(e)), outcome(lambda e=event: formatEventAsClassicLogText(e)),
                             repr(when))

    def test_same_local_time_as_twisted_across_daylight_saving_changes(self) -> None:
        """The text line's time is local with its offset: the second before a change keeps the old one."""
        # A POSIX rule (Central European Time), so no time zone database is needed.
        local_time_zone(self, "CET-1CEST,M3.5.0,M10.5.0/3")
        lines = ClassicLines()
        # 2023-03-26 01:00 UTC (+0100 -> +0200) and 2023-10-29 01:00 UTC (+0200 -> +0100).
        for change in (1_679_792_400, 1_698_541_200):
            for tenth in range(-30, 30):
                event = base(log_format="x", log_time=change + tenth / 10 + 0.0000004)
                self.assertEqual(lines(event), formatEventAsClassicLogText(event), repr(event["log_time"]))
        self.assertIn("+0200", lines(base(log_format="x", log_time=1_698_541_199.9)))
        self.assertIn("+0100", lines(base(log_format="x", log_time=1_698_541_200.0)))

    def test_attributes_of_twisteds_wrapper_render_as_twisted_renders_them(self) -> None:
        """Twisted looks fields up through a wrapper whose own ``__class__``, ``__doc__``, ``_wrapped``… win."""
        for fmt in ("error {e.__class__.__name__}", "{e.__doc__}", "{e._wrapped}", "{e.__class__!r}"):
            event = base(log_format=fmt, e=ValueError("boom"))
            for rendered in (dict(event), *self._through_fields(event)):
                self.assertEqual(fast_line(rendered), twisted_line(dict(event)), fmt)

    def test_the_time_is_written_once_per_second(self) -> None:
        written: list[float] = []

        def second(when: float) -> str:
            written.append(when)
            return f"S{int(when)}"

        clock = PerSecond(second, second)
        texts = [clock(1_700_000_000 + i / 10) for i in range(30)]
        self.assertEqual(written, [1_700_000_000, 1_700_000_001, 1_700_000_002])
        self.assertEqual(texts[0], "S1700000000")
        self.assertEqual(texts[29], "S1700000002")

    def test_twistd_text_observer_gets_the_fast_formatter(self) -> None:
        """Under ``twistd -n`` (and ``--logfile``) the lines come from L{ClassicLines}."""
        out = io.StringIO()
        for options in ({"nodaemon": True, "logfile": "-"}, {"nodaemon": False, "logfile": self.mktemp()}):
            twistd = twistd_default_observer(dict(options, syslog=False, prefix="graphsmtp"))
            self.assertIsInstance(twistd, FileLogObserver)
            self.assertIsInstance(twistd.formatEvent, ClassicLines)
            close = getattr(twistd._outFile, "close", None)
            if options["logfile"] != "-" and close is not None:
                close()
        observer = FileLogObserver(out, ClassicLines())
        text_observer_for(observer, environ={})(dict(EVENTS[0]))
        self.assertEqual(out.getvalue(), twisted_line(self._through_fields(EVENTS[0])[0]))

    def test_another_file_observer_keeps_its_own_lines(self) -> None:
        """Only twistd's own text observer is changed: one handed in (say JSON) writes its lines."""
        out = io.StringIO()
        observer = FileLogObserver(out, lambda event: "mine\n")
        text_observer_for(observer, environ={})(dict(EVENTS[0]))
        self.assertEqual(out.getvalue(), "mine\n")

    def _through_fields(self, event: dict) -> list[dict]:
        seen: list[dict] = []
        with_message_fields(seen.append)(dict(event))
        return seen


class JsonLinesTests(SynchronousTestCase):
    def test_same_json_line_as_before(self) -> None:
        lines = JsonLines()
        for event in EVENTS:
            self.assertEqual(lines(dict(event)), json_line(dict(event)), event.get("log_format"))
        for when in times():
            event = base(log_format="at {x}", x=1, log_time=when)
            self.assertEqual(lines(event), json_line(event), repr(when))

    def test_same_time_or_error_as_before_for_odd_times(self) -> None:
        lines = JsonLines()
        for when in ODD_TIMES:
            event = base(log_format="at {x}", x=1, log_time=when)
            self.assertEqual(outcome(lambda e=event: json.loads(lines(e))["time"]),
                             outcome(lambda e=event: event_as_json(e)["time"]), repr(when))

    def test_same_text_as_twisteds_formatter_for_every_event(self) -> None:
        """The ``text`` the JSON observer wrote when it always used Twisted's formatter."""
        extra = [base(log_format=fmt, e=ValueError("boom"))
                 for fmt in ("error {e.__class__.__name__}", "{e.__doc__}", "{e._wrapped}")]
        lines = JsonLines()
        for event in EVENTS + extra:
            self.assertEqual(json.loads(lines(dict(event)))["text"], twisted_text(event), event.get("log_format"))

    def test_text_is_rendered_as_twisted_renders_it(self) -> None:
        self.assertIn('"text":"say {y} }"', JsonLines()(base(log_format="say {x}", x="{y} }")))
        self.assertIn('"text":"legacy words"', JsonLines()({"message": ("legacy", "words"), "log_format": ""}))

    def test_levels(self) -> None:
        self.assertIn('"level":"warn"', JsonLines()(base(log_format="w", log_level=LogLevel.warn)))
