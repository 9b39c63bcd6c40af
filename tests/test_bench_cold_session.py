"""
``bench/cold_session.py`` times whole sessions, cold and warm: each timed session must be a
real one, a message accepted, or its figure measures something else.  (The figures themselves
are the benchmark's to print, not a test's to check.)
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import TestCase

from tests.bench_modules import load_bench

cold = load_bench("cold_session")
calls = load_bench("bench_session_calls")


class ColdSessionTests(TestCase):
    def test_each_graphsmtp_session_accepts_its_message(self) -> None:
        f = calls.factory()
        session = cold.graphsmtp_session(lambda: None, f)
        for _ in range(3):
            self.assertGreaterEqual(session(), 0.0)
        self.assertEqual(len(f.spool.messages), 3)

    def test_each_lean_session_commits_its_message(self) -> None:
        bodies: list[bytes] = []

        def commit(body: bytes) -> Deferred:
            bodies.append(body)
            return succeed(None)

        session = cold.lean_session(lambda: None, commit)
        session()
        session()
        self.assertEqual(len(bodies), 2)
        self.assertTrue(bodies[0].startswith(calls.BODY[:20]))

    def test_the_flush_runs_before_every_step(self) -> None:
        """Before the connection, each of the five client steps and the close: seven flushes."""
        flushes: list[None] = []
        cold.graphsmtp_session(lambda: flushes.append(None))()
        self.assertEqual(len(flushes), 7)

    def test_the_flusher_writes_the_memory_it_holds(self) -> None:
        flusher = cold.CacheFlusher(1)
        flusher._memory[64] = 7
        flusher()
        self.assertEqual(flusher._memory[64], 0)
