#!/usr/bin/env python
"""
Where one client's time goes (issue 13): the latency of each step of an SMTP session with one
connection per message — connect and banner, EHLO, MAIL, RCPT, DATA, the message up to its 250,
QUIT, the close — for graphsmtp and for Postfix (and, with --lean-twisted, the lean floor of
compare_postfix.py), interleaved, from the same Python client.

With one connection nothing overlaps: the cell "10 KB, 1 connection" of compare_postfix.py is
the sum of these steps.  The step that differs most is where to look (a profile of that path, or
bench/commit_costs.py for its flush).

    python bench/step_latency.py --workdir /mnt/spool-disk/bench    # as root; a real disk, not tmpfs
    python bench/step_latency.py --lean-twisted --workdir ...       # and the lean Twisted floor
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from compare_postfix import (  # noqa: E402
    ROOT,
    GraphsmtpServer,
    PlainTwistedServer,
    PostfixServer,
    on_a_real_disk,
    run_order,
    settle_disk,
)
from idle import idle_note  # noqa: E402
from interpreter import interpreter_note  # noqa: E402

from gateway.testing.ports import PortPicker  # noqa: E402

MESSAGE = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
           + (b"x" * 78 + b"\r\n") * 128 + b".\r\n")
COMMANDS = (("EHLO", b"EHLO client.test\r\n"), ("MAIL", b"MAIL FROM:<a@example.com>\r\n"),
            ("RCPT", b"RCPT TO:<b@example.com>\r\n"), ("DATA", b"DATA\r\n"), ("message to 250", MESSAGE),
            ("QUIT", b"QUIT\r\n"))
STEPS = ("connect and banner",) + tuple(name for name, _ in COMMANDS) + ("close",)


def read_reply(sock: socket.socket) -> bytes:
    """One whole reply (its last line has a space after the code)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data


def session(port: int, steps: dict[str, list[float]]) -> None:
    start = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        read_reply(sock)
        steps["connect and banner"].append(time.perf_counter() - start)
        for name, command in COMMANDS:
            start = time.perf_counter()
            sock.sendall(command)
            reply = read_reply(sock)
            steps[name].append(time.perf_counter() - start)
            if reply[:1] not in b"23":
                raise SystemExit(f"{name}: {reply!r}")
        start = time.perf_counter()
        sock.recv(16)  # the server closes after 221
        steps["close"].append(time.perf_counter() - start)
    finally:
        sock.close()


def work_directory(parent: str) -> str:
    """
    A new directory for the servers' queues under ``parent``, refused on tmpfs as the other
    benches refuse it (L{on_a_real_disk}): there the message step's flush costs nothing.
    """
    parent, _ = on_a_real_disk(parent)
    workdir = tempfile.mkdtemp(prefix="step-latency-", dir=parent)
    os.chmod(workdir, 0o755)
    return workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="work directory on a real disk (default: a new one under /var/tmp)")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per server and round (default 1000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--lean-twisted", action="store_true",
                        help="also time the floor of compare_postfix.py --lean-twisted (a flag here: one process), "
                             "to tell what any Twisted server pays on this machine from what only graphsmtp does")
    options = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: a private Postfix instance must be started by root")
    workdir = work_directory(options.workdir or "/var/tmp")
    ports = PortPicker()
    servers = [PostfixServer(workdir, ports.port()), GraphsmtpServer(workdir, ports.port(), options.python)]
    if options.lean_twisted:
        servers.insert(1, PlainTwistedServer(workdir, ports.port(), options.python, lean=True))
    try:
        for server in servers:
            server.start()
        medians: dict[str, dict[str, list[float]]] = {s.name: {step: [] for step in STEPS} for s in servers}
        for round_number in range(options.rounds):
            # Each round starts with the next server (compare_postfix's order of runs).
            for server in run_order(servers, round_number):
                steps: dict[str, list[float]] = {step: [] for step in STEPS}
                for _ in range(options.sessions):
                    session(server.port, steps)
                for step in STEPS:
                    medians[server.name][step].append(statistics.median(steps[step]))
                server.clear()
                settle_disk()
        names = [s.name for s in servers]
        print(f"median µs per step, {options.sessions} sessions × {options.rounds} interleaved rounds, "
              f"{len(MESSAGE)}-byte messages; {idle_note()}; {interpreter_note(options.python)}\n")
        others = [name for name in names if name != "graphsmtp"]
        print("| step | " + " | ".join(names) + " | " + " | ".join(f"graphsmtp − {name}" for name in others) + " |")
        print("|---|" + "---|" * (len(names) + len(others)))
        totals = dict.fromkeys(names, 0.0)
        for step in STEPS:
            values = {name: statistics.median(medians[name][step]) * 1e6 for name in names}
            for name in names:
                totals[name] += values[name]
            print(f"| {step} | " + " | ".join(f"{values[name]:.0f}" for name in names) + " | "
                  + " | ".join(f"{values['graphsmtp'] - values[name]:+.0f}" for name in others) + " |")
        print("| **sum** | " + " | ".join(f"**{totals[name]:.0f}**" for name in names) + " | "
              + " | ".join(f"**{totals['graphsmtp'] - totals[name]:+.0f}**" for name in others) + " |")
        print("\n(differences and sums are of the unrounded medians)")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
