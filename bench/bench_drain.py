#!/usr/bin/env python
"""
Benchmark of draining a backlog: the whole daemon (``twistd -n graphsmtp`` as a child process)
delivers a pre-filled spool to the fake Graph (``graphsmtp-fake-graph --latency L``, another
process), with N sending mailboxes, ``mailbox_concurrency`` C and pacing lifted.

The ceiling is ``min(N × C / L, N × mailbox_rate / 60)``; pacing is lifted, so it is N × C / L.
Printed per run: achieved msg/s between the first and the last delivery (from the fake's one
line per message), the share of the ceiling, the daemon's CPU milliseconds per delivered
message over the same interval (utime + stime from /proc/<pid>/stat), and the daemon's log
lines per message (info and above; debug lines apart).  The fake's own CPU per message is
printed too: on a small machine the fake (TLS, MIME parsing) can be what limits the rate.  So
are the new connections the fake accepted per delivery over the same interval (each one a TLS
handshake; 0 when the daemon's persistent connections cover every request in flight): a count
that does not depend on the machine's load.

    python bench/bench_drain.py                                  # 1, 5 and 20 mailboxes
    python bench/bench_drain.py --mailboxes 1 --count 1000       # the issue's reference case
    python bench/bench_drain.py --mailboxes 1 --profile /tmp/p   # + cProfile of the daemon

The backlog is written straight into the spool before the daemon starts (without fsync: the
intake is not what is measured here) and recovered at start-up like any queue.  Keep runs
short on a shared machine: the defaults take about a minute in all.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gateway.spool.disk import SpoolDisk  # noqa: E402
from gateway.spool.entry import Envelope, Provenance, SpoolEntry  # noqa: E402
from gateway.spool.fileops import FileOps  # noqa: E402
from gateway.spool.queueid import new_queue_id  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


class NoSyncOps(FileOps):
    """Pre-filling the spool is set-up, not the measurement: skip the fsyncs."""

    def sync_file(self, fd: int) -> None:
        pass

    def sync_dir(self, path: str, fd=None) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def fill_spool(directory: str, mailboxes: list[str], count: int) -> None:
    disk = SpoolDisk(directory, ops=NoSyncOps())
    disk.ensure_directories()
    now = time.time()
    for i in range(count):
        sender = mailboxes[i % len(mailboxes)]
        data = (f"From: {sender}\r\nTo: bob@fabrikam.test\r\nSubject: drain {i}\r\n"
                f"Message-ID: <drain-{i}@bench.test>\r\n\r\n" + "Hello Bob, a small message.\r\n" * 20).encode()
        queue_id = new_queue_id(now)
        temp = disk.create_temp(queue_id)
        disk.append(temp, [data])
        entry = SpoolEntry(queue_id, Envelope(sender, ("bob@fabrikam.test",)),
                           Provenance("127.0.0.1", "bench.test", "bench"), now, "", len(data),
                           next_attempt_at=now, sending_mailbox=sender)
        disk.publish(temp, entry)


def start_fake(directory: str, latency: float) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.testing.fake_graph_cli", "--directory", directory, "--port", "0",
         "--latency", str(latency), "--no-save"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("fake Graph did not start")
        lines.append(line)
        if line.startswith("ca_bundle"):
            break
    text = "".join(lines)
    return proc, tomllib.loads(text[text.index("[graph]"):])["graph"]


def toml_value(value) -> str:
    return json.dumps(value)


def run_once(args, mailbox_count: int) -> dict:
    work = tempfile.mkdtemp(prefix="bench-drain-")
    fake, graph = start_fake(os.path.join(work, "fake"), args.latency)
    daemon = None
    try:
        mailboxes = [f"m{i}@contoso.test" for i in range(mailbox_count)]
        state_dir = os.path.join(work, "state")
        fill_spool(os.path.join(state_dir, "spool"), mailboxes, args.count)
        graph.update(mailbox_concurrency=args.mailbox_concurrency, mailbox_rate=1_000_000.0, mailbox_burst=30)
        config = os.path.join(work, "graphsmtp.toml")
        with open(config, "w") as f:
            f.write("[queue]\n")
            if args.concurrency:
                f.write(f"concurrency = {args.concurrency}\n")
            f.write("[graph]\n")
            for key, value in graph.items():
                f.write(f"{key} = {toml_value(value)}\n")
        log_path = os.path.join(work, "daemon.log")
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                   f"--logfile={log_path}"]
        if args.profile:
            command += [f"--profile={args.profile}.{mailbox_count}", "--profiler=cprofile", "--savestats"]
        command += ["graphsmtp", "--config", config, "--listen", "tcp:0:interface=127.0.0.1",
                    "--state-dir", state_dir, "--hostname", "bench.test"]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        daemon = subprocess.Popen(command, env=env, cwd=ROOT)
        seen = 0
        first_t = first_cpu = last_t = last_cpu = None
        deadline = time.monotonic() + args.timeout
        while seen < args.count:
            line = fake.stdout.readline()
            if not line:
                raise SystemExit("fake Graph ended")
            if not line.startswith("sent by"):
                continue
            seen += 1
            now, cpu, fake_cpu = time.monotonic(), cpu_seconds(daemon.pid), cpu_seconds(fake.pid)
            connections = int(line.rsplit(" ", 1)[1]) if " connections " in line else 0
            if first_t is None:
                first_t, first_cpu, first_fake, first_connections = now, cpu, fake_cpu, connections
            last_t, last_cpu, last_fake, last_connections = now, cpu, fake_cpu, connections
            if now > deadline:
                print(f"  timeout after {seen} deliveries", file=sys.stderr)
                break
        elapsed = last_t - first_t
        rate = (seen - 1) / elapsed if elapsed > 0 else float("inf")
        ceiling = mailbox_count * args.mailbox_concurrency / args.latency
        if args.concurrency:
            ceiling = min(ceiling, args.concurrency / args.latency)
        cpu_ms = 1000.0 * (last_cpu - first_cpu) / max(seen - 1, 1)
        fake_ms = 1000.0 * (last_fake - first_fake) / max(seen - 1, 1)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        lines = []
        for name in sorted(os.listdir(work)):
            if name.startswith("daemon.log"):  # twistd rotates its log file every 1 MB
                with open(os.path.join(work, name), errors="replace") as f:
                    lines.extend(f.readlines())
        log_lines = len(lines)
        # Debug lines are counted apart: the default level is the health helper's to decide.
        debug_lines = sum(1 for line in lines if "#debug]" in line)
        if args.keep_log:
            shutil.copy(log_path, f"{args.keep_log}.{mailbox_count}")
        # New connections (each a TLS handshake) per delivery after the first: 0 when every
        # request in flight keeps its persistent connection.
        handshakes = (last_connections - first_connections) / max(seen - 1, 1)
        return dict(mailboxes=mailbox_count, delivered=seen, rate=rate, ceiling=ceiling, cpu_ms=cpu_ms, fake_ms=fake_ms,
                    handshakes=handshakes,
                    log_lines=(log_lines - debug_lines) / max(seen, 1), debug_lines=debug_lines / max(seen, 1))
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        fake.terminate()
        fake.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, action="append",
                        help="sending mailboxes (repeatable; default: 1, 5 and 20)")
    parser.add_argument("--count", type=int, default=1000, help="messages in the backlog (default 1000)")
    parser.add_argument("--latency", type=float, default=0.2, help="fake Graph seconds per send (default 0.2)")
    parser.add_argument("--mailbox-concurrency", type=int, default=2, help="[graph] mailbox_concurrency (default 2)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="[queue] concurrency (default: the gateway's default)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds per run")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="cProfile the daemon (twistd --profile); stats go to PREFIX.<mailboxes>")
    parser.add_argument("--keep-log", metavar="PREFIX", help="copy the daemon's log to PREFIX.<mailboxes>")
    args = parser.parse_args()
    print(f"backlog {args.count}, latency {args.latency}s, mailbox_concurrency {args.mailbox_concurrency}, "
          f"pacing lifted")
    print(f"{'mailboxes':>9} {'msg/s':>8} {'ceiling':>8} {'share':>6} {'CPU ms/msg':>11} {'log lines/msg':>14} "
          f"{'+debug/msg':>11} {'fake CPU ms/msg':>16} {'handshakes/msg':>15}")
    for n in args.mailboxes or [1, 5, 20]:
        r = run_once(args, n)
        print(f"{r['mailboxes']:>9} {r['rate']:>8.1f} {r['ceiling']:>8.1f} {100 * r['rate'] / r['ceiling']:>5.0f}% "
              f"{r['cpu_ms']:>11.2f} {r['log_lines']:>14.2f} {r['debug_lines']:>11.2f} {r['fake_ms']:>16.2f} "
              f"{r['handshakes']:>15.3f}", flush=True)
        if args.profile:
            stats = pstats.Stats(f"{args.profile}.{n}")
            stats.sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
