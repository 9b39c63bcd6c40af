"""
The SMTP session's input without I/O: bytes in, one event at a time out.

Why a reader of its own and not ``LineOnlyReceiver``: the stock receiver hands every line on as
soon as it is read, so a pipelining client's next command runs while the previous one is still
waiting for a policy, the spool or the portal, and its replies come out of order (Twisted
issue 8126); an over-long line leaves the buffer in place and the session in command mode while
the client goes on sending a message body (``twisted.mail.smtp.SMTP.lineLengthExceeded``).  Here the session asks
for the next event when it is ready for it, and the reader says when reading should stop.

* **Pipelining order.**  L{CommandReader.next_event} gives nothing while the reader is *held*:
  the session holds it while a command is being answered (L{AWAITING_REPLY}) and while the
  client does not read the replies already sent (L{CLIENT_NOT_READING}).  Input read
  meanwhile waits in the buffer, in order.
* **Flow control.**  While held, up to L{PAUSE_PENDING_INPUT} bytes are buffered; beyond that
  L{CommandReader.receive} says to pause the transport (pausing at once would cost two epoll
  calls per step, and a TLS handshake under way needs reading to go on).  More than
  L{MAX_PENDING_INPUT} (plus one DATA line) while held is not SMTP: the session closes.  The
  spool pushing back pauses reading too (L{SPOOL_FULL}), without holding the events already
  buffered.  L{CommandReader.pause_reading} and L{CommandReader.resume_reading} answer whether
  the transport must change, so it is paused and resumed once per change, not per reason.
* **Line limits.**  A command line over ``max_command_line`` is L{CommandLineTooLong} (the
  session closes: no guessing where the next command starts).  An AUTH line may be up to
  L{MAX_AUTH_LINE} octets (RFC 4954 §4); a longer one is L{AuthLineTooLong} and is skipped up
  to its CRLF, however many reads that takes, so the session can go on.
* **DATA.**  In DATA mode the reader does not look at the bytes at all: each event is every
  byte buffered so far (without a copy when nothing else was waiting), for the message intake
  to frame.  Whatever followed the final dot comes back through L{CommandReader.end_data}.
"""

from __future__ import annotations

from typing import Optional, Union

import attrs

from gateway.smtp.auth import MAX_AUTH_LINE

# Why the session holds the reader (no event comes out while any holds).
AWAITING_REPLY = "busy"
CLIENT_NOT_READING = "writes"
# Why the transport stops reading without holding events already buffered.
SPOOL_FULL = "spool"

# While held, input is buffered; beyond PAUSE_PENDING_INPUT the transport is paused, and a
# client that pushes more than MAX_PENDING_INPUT (plus one DATA line) anyway is not speaking SMTP.
PAUSE_PENDING_INPUT = 64 * 1024
MAX_PENDING_INPUT = 1024 * 1024

_CRLF = b"\r\n"


@attrs.frozen
class CommandLine:
    """One complete command line, without its CRLF."""

    line: bytes


@attrs.frozen
class CommandLineTooLong:
    """A command line over the limit: answer ``500 5.5.2`` and close."""


@attrs.frozen
class AuthLineTooLong:
    """An AUTH line over L{MAX_AUTH_LINE}; it is skipped: answer ``500 5.5.6`` and go on."""


@attrs.frozen
class MessageData:
    """Raw bytes read in DATA mode, for the message intake to frame."""

    data: bytes


Event = Union[CommandLine, CommandLineTooLong, AuthLineTooLong, MessageData]


class ReadDecision:
    """What L{CommandReader.receive} asks of the transport."""

    GO_ON = "go on"
    PAUSE = "pause"  # stop reading until the holding step is over
    OVERFLOW = "overflow"  # far too much input while a reply is pending: close the session


class CommandReader:
    """
    The input buffer of one SMTP session and the rules for cutting it into events.

    ``expect_auth_response`` is set by the session while an AUTH exchange waits for the
    client's next line, which may then be up to L{MAX_AUTH_LINE} octets.
    """

    def __init__(
        self,
        max_command_line: int,
        max_data_line: int,
        max_auth_line: int = MAX_AUTH_LINE,
        pause_threshold: int = PAUSE_PENDING_INPUT,
        max_pending: int = MAX_PENDING_INPUT,
    ) -> None:
        self.max_command_line = max_command_line
        self.max_data_line = max_data_line
        self.max_auth_line = max_auth_line
        self.pause_threshold = pause_threshold
        self.max_pending = max_pending
        self.expect_auth_response = False
        self.in_data = False
        # Input is ``_head + _buf``: a chunk that arrived with nothing else waiting stays the
        # bytes object it came as (DATA hands it on without a copy).
        self._head = b""
        self._buf = bytearray()
        self._scan_from = 0
        self._skipping = False
        self._holds: set[str] = set()
        self._read_pauses: set[str] = set()

    # -- input

    @property
    def pending(self) -> int:
        """How many bytes are buffered and not yet given out."""
        return len(self._head) + len(self._buf)

    @property
    def has_input(self) -> bool:
        return bool(self._head or self._buf)

    def receive(self, data: bytes) -> str:
        """Buffer ``data``; returns a L{ReadDecision} value."""
        if self._head or self._buf:
            self._absorb_head()
            self._buf += data
        else:
            self._head = data
        if not self._holds or self.pending <= self.pause_threshold:
            return ReadDecision.GO_ON
        if self.pending > self.max_pending + self.max_data_line:
            return ReadDecision.OVERFLOW
        reason = AWAITING_REPLY if AWAITING_REPLY in self._holds else CLIENT_NOT_READING
        return ReadDecision.PAUSE if self.pause_reading(reason) else ReadDecision.GO_ON

    def clear(self) -> None:
        """Forget all buffered input (the session is closing: nothing more is acted on)."""
        self._head = b""
        self._buf = bytearray()

    def _absorb_head(self) -> None:
        if self._head:
            self._buf[:0] = self._head
            self._head = b""

    # -- events

    def next_event(self) -> Optional[Event]:
        """The next event, or None while held or until more input completes one."""
        while not self._holds and (self._head or self._buf):
            if self.in_data:
                return self._take_data()
            self._absorb_head()
            if not self._skipping:
                return self._take_line()
            if not self._skip():
                return None
        return None

    def _take_data(self) -> MessageData:
        if self._head:
            chunk, self._head = self._head, b""
        else:
            chunk, self._buf = bytes(self._buf), bytearray()
        return MessageData(chunk)

    def _take_line(self) -> Optional[Event]:
        """The next line event, or None if more input is needed."""
        buf = self._buf
        is_auth = self.expect_auth_response or bytes(buf[:5]).upper() == b"AUTH "
        limit = self.max_auth_line if is_auth else self.max_command_line
        eol = buf.find(_CRLF, self._scan_from)
        if eol < 0:
            if len(buf) <= limit + 1:
                self._scan_from = max(0, len(buf) - 1)
                return None
            eol = len(buf)
        self._scan_from = 0
        if eol > limit:
            if not is_auth:
                return CommandLineTooLong()
            if eol == len(buf):
                self._skipping = True
                self._buf = bytearray()
            else:
                del buf[:eol + 2]
            return AuthLineTooLong()
        line = bytes(buf[:eol])
        del buf[:eol + 2]
        return CommandLine(line)

    def _skip(self) -> bool:
        """Drop the rest of a skipped line; False while its CRLF has not come yet."""
        buf = self._buf
        eol = buf.find(_CRLF)
        if eol < 0:
            # Keep a trailing CR: it may be the first half of the CRLF we wait for.
            self._buf = bytearray(b"\r") if buf[-1:] == b"\r" else bytearray()
            return False
        del buf[:eol + 2]
        self._skipping = False
        return True

    # -- DATA mode

    def start_data(self) -> None:
        """The session answered 354: from now on the input is message data."""
        self.in_data = True

    def end_data(self, rest: bytes) -> None:
        """The message ended; ``rest`` (what followed the final dot) is read as commands again."""
        self.in_data = False
        if rest:
            self._absorb_head()
            self._buf[:0] = rest

    # -- holding and pausing

    def hold(self, reason: str) -> None:
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        self._holds.discard(reason)

    def is_held(self, reason: str) -> bool:
        return reason in self._holds

    @property
    def reading_paused(self) -> bool:
        return bool(self._read_pauses)

    def pause_reading(self, reason: str) -> bool:
        """Record ``reason``; True when the transport must be paused now (the first reason)."""
        first = not self._read_pauses
        self._read_pauses.add(reason)
        return first

    def resume_reading(self, reason: str) -> bool:
        """Drop ``reason``; True when the transport must be resumed now (the last reason went)."""
        if reason not in self._read_pauses:
            return False
        self._read_pauses.discard(reason)
        return not self._read_pauses

    def clear_pauses(self) -> bool:
        """Drop every reason; True when the transport was paused and must be resumed."""
        had = bool(self._read_pauses)
        self._read_pauses.clear()
        return had


__all__ = [
    "CommandReader", "ReadDecision", "Event", "CommandLine", "CommandLineTooLong", "AuthLineTooLong", "MessageData",
    "AWAITING_REPLY", "CLIENT_NOT_READING", "SPOOL_FULL", "PAUSE_PENDING_INPUT", "MAX_PENDING_INPUT",
]
