#!/usr/bin/env python
"""
The SMTP session's CPU when it runs cold, as it does with one connection (issue 13): the
session of L{bench_session_calls} (a L{GatewaySMTPFactory} over a StringTransport, the
in-memory spool), one connection per message, with ``--flush-mb`` megabytes written before each
of the client's steps, so that what the session touches has left the CPU's caches, as it has
in the daemon while it sleeps between two commands and the client, the commit child and the
kernel run (the connection, its greeting and EHLO are the first step; the close the last).
The lean floor's protocol (``bench/plain_twisted.py --lean``) is timed the same way, for the
part that is any Twisted server's.

Why: with one connection every step waits for the one before, and in the daemon each step
starts cold.  Warm, graphsmtp's session took 170-180 µs of CPU; with 16 MB written before
each step 575-735 µs (the medians of a round), and the lean protocol's 14-15 and 56-93
(Debian's Python 3.11, the development VM, 2026-12-01).  Those 500-650 µs are much of the
one-connection cell's distance from the floors (``compare_postfix.py --lean-spool``: the
daemon's own spool behind the lean protocol is well above Postfix there).  The cold figure
follows how much code and data a session touches, not only how many calls it makes.  It needs
no network, disk or second process, but the VM's speed moves it too: within a run its rounds
spread by about ±12 %, between runs minutes or an hour apart it moved by up to a factor of two
(graphsmtp's cold session 575-1,260 µs, the lean protocol's 56-161).  Compare trees in one run
each, alternated, several times.

    python bench/cold_session.py                  # 16 MB between steps, 400 sessions, 3 rounds
    python bench/cold_session.py --flush-mb 64    # the whole L3 of this VM and more

The figure grows with ``--flush-mb`` (2 MB: 210 µs, 64 MB: 1,400 µs on that VM): compare
figures made with the same size on the same machine.
"""

from __future__ import annotations

import argparse
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


class CacheFlusher:
    """Writes ``megabytes`` of memory, one byte per 64-byte cache line: what the session had cached is evicted."""

    def __init__(self, megabytes: int) -> None:
        self._memory = bytearray(megabytes * 1024 * 1024)
        self._zeros = bytes(len(self._memory) // 64)

    def __call__(self) -> None:
        self._memory[::64] = self._zeros


def client_steps(proto: Any, flush: Callable[[], None]) -> float:
    """The client's steps after EHLO (MAIL, RCPT, DATA, the message, QUIT), each after a flush: their CPU seconds."""
    cpu = 0.0
    for data in ENVELOPE + (QUIT,):
        flush()
        start = time.thread_time()
        proto.dataReceived(data)
        cpu += time.thread_time() - start
    return cpu


def graphsmtp_session(flush: Callable[[], None], f: Optional[GatewaySMTPFactory] = None) -> Callable[[], float]:
    """
    One connection's session with graphsmtp's factory (``f``, else L{factory}'s); returns its
    CPU seconds, the flushes not counted.
    """
    f = f if f is not None else factory()

    def session() -> float:
        cpu = 0.0
        flush()
        start = time.thread_time()
        proto, transport = connect(f)  # the greeting and EHLO
        cpu += time.thread_time() - start + client_steps(proto, flush)
        flush()
        start = time.thread_time()
        proto.connectionLost(None)
        cpu += time.thread_time() - start
        transport.clear()
        return cpu

    return session


def lean_session(flush: Callable[[], None],
                 commit: Callable[[bytes], Deferred] = lambda body: succeed(None)) -> Callable[[], float]:
    """The same steps with the lean floor's protocol, committing with ``commit`` (at once, by default)."""
    f = LeanFactory(commit)

    def session() -> float:
        cpu = 0.0
        flush()
        start = time.thread_time()
        proto = f.buildProtocol(None)
        proto.makeConnection(StringTransport())
        proto.dataReceived(b"EHLO client.test\r\n")
        return cpu + time.thread_time() - start + client_steps(proto, flush)

    return session


def median_cpu(session: Callable[[], float], sessions: int) -> float:
    """The median CPU seconds of ``sessions`` runs of ``session``."""
    return statistics.median(session() for _ in range(sessions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flush-mb", type=int, default=16, help="memory written before each step (default 16)")
    parser.add_argument("--sessions", type=int, default=400, help="sessions per figure (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timing every figure once (default 3)")
    args = parser.parse_args()
    flusher = CacheFlusher(args.flush_mb)
    kinds = {
        "graphsmtp, warm": graphsmtp_session(lambda: None),
        f"graphsmtp, {args.flush_mb} MB written before each step": graphsmtp_session(flusher),
        "lean protocol, warm": lean_session(lambda: None),
        f"lean protocol, {args.flush_mb} MB written before each step": lean_session(flusher),
    }
    for session in kinds.values():
        median_cpu(session, 50)  # first-use caches
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number}: " + ", ".join(
            f"{name} {median_cpu(session, args.sessions) * 1e6:.0f} µs" for name, session in kinds.items()),
            flush=True)
    print(f"CPU per session (median of {args.sessions} one-message sessions), Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
