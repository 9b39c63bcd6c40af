"""
``bench/cold_session.py`` times whole sessions, cold and warm: each timed session must be a
real one, a message accepted, with every step timed after a flush, or its figure measures
something else.  (The figures themselves are the benchmark's to print, not a test's to check.)
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from tests.bench_modules import load_bench

cold = load_bench("cold_session")
calls = load_bench("bench_session_calls")

STEP_NAMES = ["connection, greeting and EHLO", "MAIL", "RCPT", "DATA", "the message", "QUIT", "close"]


class ColdSessionTests(TestCase):
    def test_each_graphsmtp_session_accepts_its_message(self) -> None:
        f = calls.factory()
        session = cold.graphsmtp_session(cold.Steps(lambda: None), f)
        for _ in range(3):
            self.assertIsInstance(session(), float)
        self.assertEqual(len(f.spool.messages), 3)

    def test_each_lean_session_commits_its_message(self) -> None:
        bodies: list[bytes] = []

        def commit(body: bytes) -> Deferred:
            bodies.append(body)
            return succeed(None)

        session = cold.lean_session(cold.Steps(lambda: None), commit)
        session()
        session()
        self.assertEqual(len(bodies), 2)
        self.assertTrue(bodies[0].startswith(calls.BODY[:20]))

    def test_both_flush_before_the_same_seven_steps(self) -> None:
        """Like for like: the connection with EHLO, the five client steps and the close, each after a flush."""
        for make in (cold.graphsmtp_session, cold.lean_session):
            flushes: list[None] = []
            steps = cold.Steps(lambda flushes=flushes: flushes.append(None))
            make(steps)()
            self.assertEqual(len(flushes), 7)
            self.assertEqual(list(steps.by_step), STEP_NAMES)
            self.assertTrue(all(len(times) == 1 for times in steps.by_step.values()))

    def test_the_flusher_reads_one_byte_per_cache_line(self) -> None:
        flusher = cold.CacheFlusher(1)
        flusher()
        self.assertEqual(flusher.last_read, 1024 * 1024 // 64)
