#!/usr/bin/env python
"""
Where the reactor thread's CPU goes, step by step, in the real daemon under smtp-source
(issue 13): the accept and greeting, each command (its read and what the session did with
it), the message up to its hand-off to the spool, the batch's write into the commit child,
the commit's answer (the 250, the log line, the counters), the close, and the rest (the
reactor's loop: epoll and timers; the spool threads' answers to a streamed message's writes).

bench/step_latency.py measures the same steps from the client's side; this one measures the
server's side, where the remaining gap to Postfix is: Python run once per message among
everything else, "cold", costs several times its figure in a warm loop
(bench/bench_session_calls.py).  The daemon runs with bench/reactor_probe.py installed; its
counts are read over the measured run only, after a warm-up.  The commit child's CPU (user +
system, from /proc) is given beside it.  One intake process (``[gateway] workers = 1``): the
probe is in the main process.

    python bench/reactor_steps.py --workdir /mnt/spool-disk/bench    # a real disk, not tmpfs
    python bench/reactor_steps.py --workdir /mnt/spool-disk/bench --cells 10k-1 10k-10 1m-10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_postfix import (  # noqa: E402
    CELLS,
    CLOCK_TICKS,
    HERE,
    ROOT,
    GraphsmtpServer,
    _stat_fields,
    on_a_real_disk,
    run_cell,
)
from interpreter import interpreter_note  # noqa: E402

from gateway.testing.processes import commit_child  # noqa: E402

STEPS = ("accept", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "message", "batch to the commit child", "commit answer",
         "QUIT", "socket write", "read", "close")
PRELUDE = f"import sys; sys.path.append({HERE!r}); import reactor_probe; reactor_probe.install(); "


def read_counts(server: GraphsmtpServer, out: str) -> dict:
    """SIGUSR2 to the daemon, then its counts since the last one (the probe writes them whole)."""
    if os.path.exists(out):
        os.unlink(out)
    assert server.process is not None
    server.process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not os.path.exists(out):
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise SystemExit(f"the daemon wrote no counts to {out}; see its twistd.log")
        time.sleep(0.05)
    with open(out) as f:
        return json.load(f)


def table(counts: dict, messages: int) -> str:
    steps, total = counts["steps"], counts["reactor_cpu_ns"]
    rows = ["| step | calls per message | reactor CPU µs per message | share |", "|---|---|---|---|"]
    named = 0
    for step in STEPS + tuple(sorted(set(steps) - set(STEPS))):
        if step in steps:
            calls, cpu = steps[step]
            named += cpu
            rows.append(f"| {step} | {calls / messages:.3f} | {cpu / messages / 1e3:.0f} | {cpu * 100 / total:.0f} % |")
    rest = total - named
    rows.append(f"| the rest (the reactor's loop, other callbacks) | | {rest / messages / 1e3:.0f} | "
                f"{rest * 100 / total:.0f} % |")
    rows.append(f"| **reactor thread, all** | | **{total / messages / 1e3:.0f}** | |")
    return "\n".join(rows)


def commit_child_cpu(server: GraphsmtpServer) -> float:
    """Seconds of CPU (user + system) the daemon's commit child has used so far."""
    assert server.process is not None
    child = commit_child(server.process.pid)
    fields = None if child is None else _stat_fields(child)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="work directory on a real disk")
    parser.add_argument("--cells", nargs="*", default=["10k-1", "10k-10"],
                        help="cells of compare_postfix.py: " + ", ".join(c.name for c in CELLS))
    parser.add_argument("--warmup", type=int, default=300, help="messages sent before the counts start")
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    options = parser.parse_args()
    cells = [c for c in CELLS if c.name in options.cells]
    unknown = set(options.cells) - {c.name for c in CELLS}
    if unknown:
        parser.error(f"unknown cell(s): {', '.join(sorted(unknown))}")
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source not found: install Debian's postfix package")
    workdir, _ = on_a_real_disk(options.workdir)
    from gateway.testing.ports import PortPicker

    out = os.path.join(workdir, "reactor-steps.json")
    os.environ["GRAPHSMTP_PROBE_OUT"] = out
    print(interpreter_note(options.python))
    server = GraphsmtpServer(workdir, PortPicker().port(), options.python, prelude=PRELUDE)
    server.start()
    try:
        for cell in cells:
            run_cell(server, cell, options.warmup)
            read_counts(server, out)  # from here on
            child = commit_child_cpu(server)
            result = run_cell(server, cell, cell.messages)
            child = commit_child_cpu(server) - child
            counts = read_counts(server, out)
            print(f"\n{cell.label()}: {cell.messages} messages, {result.rate:.0f} msg/s, "
                  f"{result.cpu_ms:.2f} ms CPU per message (the whole daemon), of which the commit child "
                  f"{child * 1e6 / cell.messages:.0f} µs\n")
            print(table(counts, cell.messages), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
