"""
The log events a test caused, captured with Twisted's own L{EventLoggingObserver}, plus the
readings the gateway's tests need: formatted lines, everything (formatted and raw) for "this
secret never appears" checks, warnings, lines that mention a queue id.

One capture for every test (it used to be copied, with small differences, into several test
helpers)::

    log = LogCapture.install(self)          # observes the global publisher until cleanup
    ...
    self.assertIn("paused", "\\n".join(log.messages()))
    log.assert_absent(self, client_secret)
"""

from __future__ import annotations

import base64

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


def format_line(event: LogEvent) -> str:
    """``event`` as one text line; a logged failure's message is appended (it is not in the format)."""
    text = formatEvent(event) or ""
    failure = event.get("log_failure")
    if failure is not None:
        text += " " + failure.getErrorMessage()
    return text


class LogCapture(EventLoggingObserver):
    """An L{EventLoggingObserver} with the questions tests ask of a gateway's log."""

    @classmethod
    def install(cls, case: SynchronousTestCase) -> LogCapture:
        """Observe the global log publisher for the rest of ``case`` (removed at cleanup)."""
        capture = cls()
        globalLogPublisher.addObserver(capture)
        case.addCleanup(globalLogPublisher.removeObserver, capture)
        return capture

    @property
    def events(self) -> list[LogEvent]:
        """Every raw event so far."""
        return list(self)

    def messages(self) -> list[str]:
        """Every event formatted as the log would show it (without failure messages)."""
        return [formatEvent(event) or "" for event in self]

    @property
    def lines(self) -> list[str]:
        """Every event as one line, with a logged failure's message (L{format_line})."""
        return [format_line(event) for event in self]

    def mentioning(self, needle: str) -> list[str]:
        """The L{lines} that contain ``needle`` (none for an empty needle)."""
        return [line for line in self.lines if needle and needle in line]

    def warnings(self) -> list[str]:
        """The formatted events logged at warning level."""
        return [formatEvent(event) or "" for event in self if event.get("log_level") == LogLevel.warn]

    def text(self) -> str:
        """
        Everything that could reach an output: each event formatted and its raw fields
        (minus the logger object), so a secret hiding in an unformatted field is found too.
        """
        parts = []
        for event in self:
            parts.append(_formatted(event))
            parts.append(repr({key: value for key, value in event.items() if key != "log_logger"}))
        return "\n".join(parts)

    def assert_absent(self, case: SynchronousTestCase, *secrets: str) -> None:
        """Fail ``case`` if any of ``secrets`` (or its base64 form) was logged."""
        text = self.text()
        for secret in secrets:
            case.assertNotIn(secret, text)
            case.assertNotIn(base64.b64encode(secret.encode()).decode(), text)


def _formatted(event: LogEvent) -> str:
    try:
        return formatEvent(event) or ""
    except Exception:  # noqa: BLE001 - a broken format string must not hide the raw fields
        return ""


__all__ = ["LogCapture", "format_line"]
