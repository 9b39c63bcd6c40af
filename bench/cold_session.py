#!/usr/bin/env python
"""
The SMTP session's CPU when its code and data are no longer in the CPU's caches (issue 13): the
session of L{bench_session_calls} (a L{GatewaySMTPFactory} over a StringTransport, the
in-memory spool), one connection per message, with ``--flush-mb`` megabytes read before each
step (the connection with its greeting and EHLO, MAIL, RCPT, DATA, the message, QUIT, the
close).  The lean floor's protocol (``bench/plain_twisted.py --lean``) is timed the same way.
Nothing is logged to a file: the session's log line goes to Twisted's start-up buffer.

Why: with one connection every step waits for the one before, and between two steps the
daemon sleeps while the client, the commit child and the kernel run; what they touch may push
the session's code and data out of the caches.  How much does is not measured here (this VM
exposes no cache-miss counters), so the figure is the session's sensitivity to it, not the
daemon's cost: it grows with ``--flush-mb`` (graphsmtp's session, one run each: 2 MB 315 µs,
8 MB 441, 32 MB 1,324, 64 MB 1,577 on the development VM, which has 1 MB of L2 per core and
32 MB of L3).  With 16 MB, graphsmtp's session took 3.5-5 times its warm CPU in each round
(warm 182-311 µs, cold 792-1,226 in seven rounds of three runs, Debian's Python 3.11,
2026-12-01; the VM's speed moved both), the lean protocol 16-25 and 79-182 µs: graphsmtp's
session cost 160-290 µs more than the lean one warm, 700-1,050 µs more cold.  Rounds of one
run spread by up to a fifth; compare trees in runs of their own, alternated, several times.

    python bench/cold_session.py                  # 16 MB before each step, 400 sessions, 3 rounds
    python bench/cold_session.py --by-step        # and each step's median
    python bench/cold_session.py --flush-mb 64    # more than this VM's L3
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional

# Appended, not prepended: PYTHONPATH may point at another tree to compare with.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from bench_session_calls import ENVELOPE, connect, factory  # noqa: E402
from plain_twisted import LeanFactory  # noqa: E402
from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from gateway.smtp.factory import GatewaySMTPFactory  # noqa: E402

QUIT = b"QUIT\r\n"
#: A session's steps, named as ``--by-step`` prints them: the first, the client's after EHLO, the last.
OPEN = "connection, greeting and EHLO"
CLIENT_STEPS = ("MAIL", "RCPT", "DATA", "the message", "QUIT")
CLOSE = "close"


class CacheFlusher:
    """
    Reads ``megabytes`` of memory, one byte per 64-byte cache line, so that what the session had
    cached is evicted.  The memory is written once, when made (a fresh allocation would read as
    the kernel's one zero page); reading it leaves no dirty lines, so the timed step does not pay
    for writing them back.
    """

    def __init__(self, megabytes: int) -> None:
        self._memory = bytearray(b"\xa5") * (megabytes * 1024 * 1024)
        #: Bytes read by the last call (one per cache line).
        self.last_read = 0

    def __call__(self) -> None:
        self.last_read = len(self._memory[::64])


class Steps:
    """
    Runs a session's steps, each after ``flush``, and adds up their CPU seconds (the flushes not
    counted); ``by_step`` keeps every step's figure by its name, for ``--by-step``.
    """

    def __init__(self, flush: Callable[[], None]) -> None:
        self.flush = flush
        self.by_step: dict[str, list[float]] = collections.defaultdict(list)

    def run(self, name: str, action: Callable[[], Any]) -> float:
        self.flush()
        start = time.thread_time()
        action()
        cpu = time.thread_time() - start
        self.by_step[name].append(cpu)
        return cpu

    def client(self, proto: Any) -> float:
        """The client's steps after EHLO: MAIL, RCPT, DATA, the message, QUIT."""
        return sum(self.run(name, lambda data=data: proto.dataReceived(data))
                   for name, data in zip(CLIENT_STEPS, ENVELOPE + (QUIT,), strict=True))


def graphsmtp_session(steps: Steps, f: Optional[GatewaySMTPFactory] = None) -> Callable[[], float]:
    """
    One connection's session with graphsmtp's factory (``f``, else L{factory}'s); returns its
    CPU seconds.
    """
    f = f if f is not None else factory()

    def session() -> float:
        opened: list[Any] = []
        cpu = steps.run(OPEN, lambda: opened.extend(connect(f)))
        proto, transport = opened
        cpu += steps.client(proto) + steps.run(CLOSE, lambda: proto.connectionLost(None))
        transport.clear()
        return cpu

    return session


def lean_session(steps: Steps,
                 commit: Callable[[bytes], Deferred] = lambda body: succeed(None)) -> Callable[[], float]:
    """The same steps with the lean floor's protocol, committing with ``commit`` (at once, by default)."""
    f = LeanFactory(commit)

    def session() -> float:
        proto = f.buildProtocol(None)

        def open_and_greet() -> None:
            proto.makeConnection(StringTransport())
            proto.dataReceived(b"EHLO client.test\r\n")

        cpu = steps.run(OPEN, open_and_greet)
        return cpu + steps.client(proto) + steps.run(CLOSE, lambda: proto.connectionLost(None))

    return session


def median_cpu(session: Callable[[], float], sessions: int) -> float:
    """The median CPU seconds of ``sessions`` runs of ``session``."""
    return statistics.median(session() for _ in range(sessions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flush-mb", type=int, default=16, help="memory read before each step (default 16)")
    parser.add_argument("--sessions", type=int, default=400, help="sessions per figure (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timing every figure once (default 3)")
    parser.add_argument("--by-step", action="store_true", help="also each step's median CPU")
    args = parser.parse_args()
    flusher = CacheFlusher(args.flush_mb)
    cold = f"{args.flush_mb} MB read before each step"
    steps = {("graphsmtp", "warm"): Steps(lambda: None), ("graphsmtp", cold): Steps(flusher),
             ("lean protocol", "warm"): Steps(lambda: None), ("lean protocol", cold): Steps(flusher)}
    kinds = {key: (graphsmtp_session if key[0] == "graphsmtp" else lean_session)(timer)
             for key, timer in steps.items()}
    for session in kinds.values():
        median_cpu(session, 50)  # first-use caches
    for timer in steps.values():
        timer.by_step.clear()
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number}: " + ", ".join(
            f"{who}, {how} {median_cpu(session, args.sessions) * 1e6:.0f} µs" for (who, how), session in kinds.items()),
            flush=True)
    print(f"CPU per session (median of {args.sessions} one-message sessions), Python {sys.version.split()[0]}")
    if args.by_step:
        print(f"\nµs per step, medians of every round's sessions: warm, then {cold}")
        for who in ("graphsmtp", "lean protocol"):
            print(f"{who}: " + ", ".join(
                f"{name} {statistics.median(steps[(who, 'warm')].by_step[name]) * 1e6:.0f}"
                f"/{statistics.median(steps[(who, cold)].by_step[name]) * 1e6:.0f}"
                for name in (OPEN, *CLIENT_STEPS, CLOSE)))


if __name__ == "__main__":
    main()
