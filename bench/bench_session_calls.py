#!/usr/bin/env python
"""
Cost of the SMTP session machinery alone, without sockets or the disk (issue 13): a
L{GatewaySMTPFactory} session over a StringTransport, the in-memory spool and a chain of one
synchronous guard, fed the commands ``smtp-source`` sends.  Prints, per 10 KB message, the
Python calls made (cProfile; independent of the machine's load, so before/after comparisons
hold on a busy machine) and the CPU time (minimum of several runs; noisy when other work runs).

    python bench/bench_session_calls.py              # many messages per connection (smtp-source -d)
    python bench/bench_session_calls.py --connect    # one connection per message

Compare two commits by running the script of one with ``PYTHONPATH`` set to the other's tree.
Figures on the 2-core development VM, busy (load 5-8), commit ab9ef1c -> this round's end:
Python calls per message 1208 -> 959 (many messages per connection), 1531 -> 1229 (one
connection per message).  The CPU times swing by 30 % run to run on that machine.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

# Appended, not prepended: PYTHONPATH may point at another tree to compare with.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from gateway.config.model import Limits, ListenerConfig  # noqa: E402
from gateway.policy.base import PolicyBase  # noqa: E402
from gateway.policy.chain import PolicyChain  # noqa: E402
from gateway.smtp.factory import GatewaySMTPFactory  # noqa: E402
from gateway.testing.memory_spool import MemorySpool  # noqa: E402

BODY = (b"From: a@sender.test\r\nTo: r@rcpt.test\r\nSubject: bench\r\n\r\n"
        + (b"x" * 78 + b"\r\n") * 120 + b".\r\n")
ENVELOPE = (b"MAIL FROM:<a@sender.test>\r\n", b"RCPT TO:<r@rcpt.test>\r\n", b"DATA\r\n", BODY)


class Guard(PolicyBase):
    """A guard that lets everything through, synchronously (like the relay guard's usual answer)."""


def factory() -> GatewaySMTPFactory:
    limits = Limits(max_messages_per_session=10**9, max_commands_before_mail=10**9)
    listener = ListenerConfig(name="bench", endpoint="tcp:0", limits=limits)
    return GatewaySMTPFactory(listener, "bench.test", MemorySpool(), PolicyChain([], guard=Guard()), Clock())


def connect(f: GatewaySMTPFactory) -> tuple:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 40000))
    proto = f.buildProtocol(None)
    proto.makeConnection(transport)
    proto.dataReceived(b"EHLO client.test\r\n")
    return proto, transport


def run(n: int, per_connection: bool) -> None:
    f = factory()
    if not per_connection:
        proto, transport = connect(f)
    for _ in range(n):
        if per_connection:
            proto, transport = connect(f)
        for data in ENVELOPE:
            proto.dataReceived(data)
        if per_connection:
            proto.dataReceived(b"QUIT\r\n")
            proto.connectionLost(None)
        transport.clear()
    assert len(f.spool.messages) == n, "not every message was accepted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", action="store_true", help="one connection per message")
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    run(20, args.connect)  # warm-up: first-use caches
    profile = cProfile.Profile()
    profile.enable()
    run(args.messages, args.connect)
    profile.disable()
    calls = sum(stat[1] for stat in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
    cpu = []
    for _ in range(args.runs):
        start = time.process_time()
        run(args.messages, args.connect)
        cpu.append(time.process_time() - start)
    mode = "one connection per message" if args.connect else "many messages per connection"
    print(f"{mode}: {calls / args.messages:.0f} Python calls per message, "
          f"{min(cpu) / args.messages * 1e6:.0f} us CPU per message (min of {args.runs})")


if __name__ == "__main__":
    main()
