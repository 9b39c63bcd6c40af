"""
Unit tests of the SMTP session's sans-IO command reader (L{gateway.smtp.input}): no reactor,
no transport — bytes in, events out.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.auth import MAX_AUTH_LINE
from gateway.smtp.input import (
    AWAITING_REPLY,
    CLIENT_NOT_READING,
    SPOOL_FULL,
    AuthLineTooLong,
    CommandLine,
    CommandLineTooLong,
    CommandReader,
    MessageData,
    ReadDecision,
)


def drain(reader: CommandReader) -> list:
    events = []
    while True:
        event = reader.next_event()
        if event is None:
            return events
        events.append(event)


class PipeliningTests(SynchronousTestCase):
    def test_pipelined_commands_come_out_one_at_a_time_in_order(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        self.assertEqual(reader.next_event(), CommandLine(b"MAIL FROM:<a@b.test>"))
        reader.hold(AWAITING_REPLY)
        # While the MAIL reply is pending nothing else comes out, however much is buffered.
        self.assertIsNone(reader.next_event())
        reader.receive(b"QUIT\r\n")
        self.assertIsNone(reader.next_event())
        reader.release(AWAITING_REPLY)
        self.assertEqual(drain(reader), [CommandLine(b"RCPT TO:<c@d.test>"), CommandLine(b"DATA"), CommandLine(b"QUIT")])

    def test_client_not_reading_holds_too(self):
        reader = CommandReader(512, 1000)
        reader.hold(CLIENT_NOT_READING)
        reader.receive(b"NOOP\r\n")
        self.assertIsNone(reader.next_event())
        self.assertTrue(reader.is_held(CLIENT_NOT_READING))
        reader.release(CLIENT_NOT_READING)
        self.assertEqual(reader.next_event(), CommandLine(b"NOOP"))

    def test_partial_lines_are_joined_across_reads(self):
        reader = CommandReader(512, 1000)
        for piece in (b"EH", b"LO client", b".test\r", b"\nNO", b"OP\r\n"):
            reader.receive(piece)
        self.assertEqual(drain(reader), [CommandLine(b"EHLO client.test"), CommandLine(b"NOOP")])
        self.assertEqual(reader.pending, 0)

    def test_incomplete_line_waits(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"NOOP\r")
        self.assertIsNone(reader.next_event())
        self.assertEqual(reader.pending, 5)
        self.assertTrue(reader.has_input)

    def test_bare_lf_does_not_end_a_command(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"NOOP\nRSET\r\n")
        self.assertEqual(drain(reader), [CommandLine(b"NOOP\nRSET")])


class LineLimitTests(SynchronousTestCase):
    def test_over_long_command_line_without_crlf(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"C" * 513)
        self.assertIsNone(reader.next_event(), "a line of exactly limit+1 bytes may still end in CRLF")
        reader.receive(b"C")
        self.assertEqual(reader.next_event(), CommandLineTooLong())

    def test_over_long_complete_command_line(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"N" * 513 + b"\r\nNOOP\r\n")
        self.assertEqual(reader.next_event(), CommandLineTooLong())

    def test_line_at_the_limit_is_accepted(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"N" * 512 + b"\r\n")
        self.assertEqual(reader.next_event(), CommandLine(b"N" * 512))

    def test_auth_lines_may_be_longer(self):
        reader = CommandReader(512, 1000)
        line = b"AUTH PLAIN " + b"A" * 4000
        reader.receive(line + b"\r\n")
        self.assertEqual(reader.next_event(), CommandLine(line))
        reader.expect_auth_response = True
        reader.receive(b"B" * 4000 + b"\r\n")
        self.assertEqual(reader.next_event(), CommandLine(b"B" * 4000))

    def test_over_long_auth_line_is_skipped_across_reads_and_the_session_goes_on(self):
        reader = CommandReader(512, 1000)
        reader.expect_auth_response = True
        reader.receive(b"x" * (MAX_AUTH_LINE + 2))
        self.assertEqual(reader.next_event(), AuthLineTooLong())
        self.assertEqual(reader.pending, 0, "the skipped line is not kept")
        reader.expect_auth_response = False
        reader.receive(b"y" * 5000 + b"\r")
        self.assertIsNone(reader.next_event())
        self.assertEqual(reader.pending, 1, "a trailing CR is kept: it may start the CRLF")
        reader.receive(b"\nNOOP\r\n")
        self.assertEqual(drain(reader), [CommandLine(b"NOOP")])

    def test_over_long_complete_auth_line_is_dropped(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"AUTH PLAIN " + b"A" * MAX_AUTH_LINE + b"\r\nNOOP\r\n")
        self.assertEqual(drain(reader), [AuthLineTooLong(), CommandLine(b"NOOP")])


class DataModeTests(SynchronousTestCase):
    def test_data_is_handed_on_raw_without_a_copy(self):
        reader = CommandReader(512, 1000)
        reader.start_data()
        chunk = b"Subject: x\r\n\r\nbody\r\n.\r\n"
        reader.receive(chunk)
        event = reader.next_event()
        self.assertIsInstance(event, MessageData)
        self.assertIs(event.data, chunk)

    def test_buffered_data_comes_out_as_one_chunk(self):
        reader = CommandReader(512, 1000)
        reader.start_data()
        reader.hold(AWAITING_REPLY)
        reader.receive(b"one\r\n")
        reader.receive(b"two\r\n")
        self.assertIsNone(reader.next_event())
        reader.release(AWAITING_REPLY)
        self.assertEqual(drain(reader), [MessageData(b"one\r\ntwo\r\n")])

    def test_commands_after_data_are_read_as_commands_in_order(self):
        reader = CommandReader(512, 1000)
        reader.receive(b"DATA\r\nbody\r\n.\r\nQUIT\r\n")
        self.assertEqual(reader.next_event(), CommandLine(b"DATA"))
        reader.start_data()
        event = reader.next_event()
        self.assertEqual(event, MessageData(b"body\r\n.\r\nQUIT\r\n"))
        reader.receive(b"NOOP\r\n")
        reader.end_data(b"QUIT\r\n")  # what the intake found after the final dot
        self.assertFalse(reader.in_data)
        self.assertEqual(drain(reader), [CommandLine(b"QUIT"), CommandLine(b"NOOP")])

    def test_long_lines_are_not_judged_in_data_mode(self):
        reader = CommandReader(512, 1000)
        reader.start_data()
        reader.receive(b"B" * 5000)
        self.assertEqual(reader.next_event(), MessageData(b"B" * 5000))


class FlowControlTests(SynchronousTestCase):
    def test_reading_goes_on_below_the_threshold_while_held(self):
        reader = CommandReader(512, 1000, pause_threshold=100, max_pending=1000)
        reader.hold(AWAITING_REPLY)
        self.assertEqual(reader.receive(b"N" * 100), ReadDecision.GO_ON)
        self.assertFalse(reader.reading_paused)

    def test_pause_beyond_the_threshold_while_held_and_resume_on_release(self):
        reader = CommandReader(512, 1000, pause_threshold=100, max_pending=1000)
        reader.hold(AWAITING_REPLY)
        self.assertEqual(reader.receive(b"N" * 101), ReadDecision.PAUSE)
        self.assertTrue(reader.reading_paused)
        # Paused once: a second read over the threshold does not pause again.
        self.assertEqual(reader.receive(b"N"), ReadDecision.GO_ON)
        reader.release(AWAITING_REPLY)
        self.assertTrue(reader.resume_reading(AWAITING_REPLY))
        self.assertFalse(reader.reading_paused)

    def test_unheld_reader_never_pauses(self):
        reader = CommandReader(512, 1000, pause_threshold=100, max_pending=1000)
        self.assertEqual(reader.receive(b"N" * 5000), ReadDecision.GO_ON)

    def test_the_pause_names_the_client_not_reading(self):
        reader = CommandReader(512, 1000, pause_threshold=10, max_pending=1000)
        reader.hold(CLIENT_NOT_READING)
        self.assertEqual(reader.receive(b"N" * 11), ReadDecision.PAUSE)
        self.assertFalse(reader.resume_reading(AWAITING_REPLY))
        self.assertTrue(reader.resume_reading(CLIENT_NOT_READING))

    def test_overflow_while_held(self):
        reader = CommandReader(512, 50, pause_threshold=100, max_pending=1000)
        reader.hold(AWAITING_REPLY)
        self.assertEqual(reader.receive(b"N" * 1050), ReadDecision.PAUSE)
        self.assertEqual(reader.receive(b"N"), ReadDecision.OVERFLOW)

    def test_transport_changes_once_per_change_not_per_reason(self):
        reader = CommandReader(512, 1000)
        self.assertTrue(reader.pause_reading(SPOOL_FULL))
        self.assertFalse(reader.pause_reading(AWAITING_REPLY))
        self.assertFalse(reader.resume_reading(SPOOL_FULL))
        self.assertFalse(reader.resume_reading(SPOOL_FULL), "a reason not held changes nothing")
        self.assertTrue(reader.resume_reading(AWAITING_REPLY))

    def test_spool_pause_does_not_hold_buffered_events(self):
        reader = CommandReader(512, 1000)
        reader.start_data()
        reader.pause_reading(SPOOL_FULL)
        reader.receive(b"data")
        self.assertEqual(reader.next_event(), MessageData(b"data"))

    def test_clear_pauses_and_clear(self):
        reader = CommandReader(512, 1000)
        self.assertFalse(reader.clear_pauses())
        reader.pause_reading(SPOOL_FULL)
        self.assertTrue(reader.clear_pauses())
        self.assertFalse(reader.reading_paused)
        reader.receive(b"NOOP\r\nRSET\r\n")
        reader.clear()
        self.assertEqual((reader.pending, reader.next_event()), (0, None))
