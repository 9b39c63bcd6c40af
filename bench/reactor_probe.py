"""
Inside a graphsmtp daemon started by bench/reactor_steps.py: counts the reactor thread's CPU
per step of an SMTP session (issue 13).  Not part of the gateway; imported only by the ``-c``
prelude that bench gives the daemon's Python, before twistd runs.

Each step is one entry point the reactor calls, wrapped to add its calls and the calling
thread's CPU (``time.thread_time_ns``, which a busy machine does not inflate as it does wall
time).  A step called from inside another step is counted in the outer one only.  SIGUSR2
writes the counts since the last SIGUSR2, with the reactor thread's whole CPU over the same
span, as JSON to the file ``GRAPHSMTP_PROBE_OUT`` names, and starts counting again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable

#: The commands smtp-source sends, by their first four octets.
_VERBS = {b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"QUIT", b"RSET", b"NOOP"}


class Probe:
    """The counts: step name -> [calls, CPU ns]; ``active`` is the step being counted."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.counts: dict[str, list[int]] = {}
        self.active = False
        self.since = time.thread_time_ns()

    def wrap(self, owner: Any, attribute: str, step: Callable[..., str]) -> None:
        original = getattr(owner, attribute)
        probe = self

        def counted(*args: Any, **kwargs: Any) -> Any:
            if probe.active:
                return original(*args, **kwargs)
            probe.active = True
            start = time.thread_time_ns()
            try:
                return original(*args, **kwargs)
            finally:
                probe.active = False
                entry = probe.counts.setdefault(step(*args, **kwargs), [0, 0])
                entry[0] += 1
                entry[1] += time.thread_time_ns() - start

        setattr(owner, attribute, counted)

    def dump(self, *_: Any) -> None:
        now = time.thread_time_ns()
        with open(self.out + ".tmp", "w") as f:
            json.dump({"steps": self.counts, "reactor_cpu_ns": now - self.since}, f)
        os.replace(self.out + ".tmp", self.out)  # whole, for the bench that waits for it
        self.counts = {}
        self.since = now


def _command(_session: Any, data: bytes) -> str:
    verb = data[:4].upper()
    return verb.decode("ascii") if len(data) < 512 and verb in _VERBS else "message"


def install() -> None:
    """Wrap the session's entry points; the signal handler is set here, before twistd starts."""
    from twisted.internet import tcp

    from gateway.smtp.protocol import GatewayESMTP
    from gateway.spool.commit_process import _Child
    from gateway.spool.group_commit import GroupCommitter

    probe = Probe(os.environ["GRAPHSMTP_PROBE_OUT"])
    probe.wrap(tcp.Port, "doRead", lambda *_: "accept")
    probe.wrap(GatewayESMTP, "dataReceived", _command)
    probe.wrap(_Child, "outReceived", lambda *_: "commit answer")
    probe.wrap(GroupCommitter, "_finished", lambda *_: "commit answer")  # the threads' answers
    probe.wrap(tcp.Connection, "connectionLost", lambda *_: "close")
    signal.signal(signal.SIGUSR2, probe.dump)
