"""
Inside a graphsmtp daemon started by bench/reactor_steps.py: counts the reactor thread's CPU
per step of an SMTP session (issue 13).  Not part of the gateway; imported only by the ``-c``
prelude that bench gives the daemon's Python, before twistd runs.

Each step is one entry point the reactor calls, wrapped to add its calls and the calling
thread's CPU (``time.thread_time_ns``, which a busy machine does not inflate as it does wall
time): a TCP read with what the session did with it (named after the command it carried),
an accept (several connections may come in one), a read of the commit child's answers, a
write of a batch into its stdin, the answer of a commit run in the spool's threads, and a
closed connection.  A step called from inside another step is counted in the outer one only.
Each counted call costs two reads of the thread's CPU clock on top.  SIGUSR2 writes the counts
since the last SIGUSR2, with the reactor thread's whole CPU over the same span, as JSON to the
file ``GRAPHSMTP_PROBE_OUT`` names, and starts counting again.  (The gateway wires no handler
to SIGUSR2; if it ever does, this one, set first, is replaced and the bench says it got no counts.)
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
    """The counts: step name -> [calls, CPU ns]; ``active`` while a step is being counted."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.counts: dict[str, list[int]] = {}
        self.active = False
        self.since = time.thread_time_ns()
        #: The command a TCP read carried, set while it is handled (L{label}).
        self.read_label = "read"

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
                spent = time.thread_time_ns() - start
                probe.active = False
                entry = probe.counts.setdefault(step(*args, **kwargs), [0, 0])
                entry[0] += 1
                entry[1] += spent

        setattr(owner, attribute, counted)

    def dump(self, *_: Any) -> None:
        now = time.thread_time_ns()
        with open(self.out + ".tmp", "w") as f:
            json.dump({"steps": self.counts, "reactor_cpu_ns": now - self.since}, f)
        os.replace(self.out + ".tmp", self.out)  # whole, for the bench that waits for it
        self.counts = {}
        self.since = now

    def label(self, owner: Any, attribute: str) -> None:
        """Name the TCP read under way after what ``attribute`` of ``owner`` got (not timed itself)."""
        original = getattr(owner, attribute)
        probe = self

        def labelled(session: Any, data: bytes) -> Any:
            verb = data[:4].upper()
            probe.read_label = verb.decode("ascii") if len(data) < 512 and verb in _VERBS else "message"
            return original(session, data)

        setattr(owner, attribute, labelled)

    def tcp_read(self, *_: Any) -> str:
        label, self.read_label = self.read_label, "read"
        return label


def install() -> None:
    """Wrap the session's entry points; the signal handler is set here, before twistd starts."""
    from twisted.internet import process, tcp

    from gateway.smtp.protocol import GatewayESMTP
    from gateway.spool.group_commit import GroupCommitter

    probe = Probe(os.environ["GRAPHSMTP_PROBE_OUT"])
    probe.wrap(tcp.Port, "doRead", lambda *_: "accept")
    probe.label(GatewayESMTP, "dataReceived")
    probe.wrap(tcp.Connection, "doRead", probe.tcp_read)
    probe.wrap(tcp.Connection, "doWrite", lambda *_: "socket write")  # what a reply's send left
    probe.wrap(process.ProcessReader, "doRead", lambda *_: "commit answer")
    probe.wrap(process.ProcessWriter, "doWrite", lambda *_: "batch to the commit child")
    probe.wrap(GroupCommitter, "_finished", lambda *_: "commit answer")  # of a commit in the threads
    probe.wrap(tcp.Connection, "connectionLost", lambda *_: "close")
    signal.signal(signal.SIGUSR2, probe.dump)
