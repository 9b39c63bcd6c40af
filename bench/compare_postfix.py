#!/usr/bin/env python
"""
Durable intake, graphsmtp against Postfix, side by side in one run.

Both servers run on this machine under the same load from Postfix's own load generator,
``smtp-source``, and neither delivers anything during the run:

- Postfix: a private instance (its own config directory, queue and data directory under the
  work directory, no chroot, listening on 127.0.0.1 on a free port) with
  ``smtpd_data_restrictions = check_client_access static:HOLD``, so every accepted message is
  fsynced into ``queue/hold`` and stays there.
- graphsmtp: the whole daemon (``twistd -n graphsmtp``, a subprocess) with
  ``[queue] hold_new = true``, so every accepted message is committed straight into the
  spool's ``held/`` directory (same durability as the queue) and the runner never sees it.

The cells (message size x concurrent connections) are run **interleaved**: rep 1 of every
cell for Postfix and graphsmtp, then rep 2, ... so drift in the machine's load hits both
alike; each cell's runs start one server later than the previous cell's, and every other
round of starts runs the servers backwards (L{run_order}).  After every run the queue is
counted: every message ``smtp-source`` got a 250 for must be in ``queue/hold`` (Postfix) or
``held/`` (graphsmtp), or the run is reported as a failure.  Server CPU is the whole process
tree of each server (user + system time of the root, of its reaped children and of every live
descendant, from /proc), so Postfix's smtpd and cleanup processes are counted like graphsmtp's
threads.

    .venv/bin/python bench/compare_postfix.py                 # 3 reps, every cell
    .venv/bin/python bench/compare_postfix.py --quick         # fewer messages, 3 reps
    .venv/bin/python bench/compare_postfix.py --reps 5 --cells 10k-10 1m-10
    .venv/bin/python bench/compare_postfix.py --workdir /var/tmp/bench --keep
    .venv/bin/python bench/compare_postfix.py --workers 1 2     # graphsmtp with 1 and 2 intake processes
    git worktree add /var/tmp/base <commit>                      # an older graphsmtp, same venv:
    .venv/bin/python bench/compare_postfix.py --quick --baseline /var/tmp/base
    .venv/bin/python bench/compare_postfix.py --plain-twisted 1 --lean-twisted 1 2  # and the floors (plain_twisted.py)

Run it as root (Postfix's master must start as root; its queue is chowned to the postfix user).
The work directory must be on a real disk: tmpfs makes fsync free and the comparison
meaningless, so it is refused.  Ratios (graphsmtp / Postfix), not the absolute numbers, are
what the table claims; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REFUSED_FILESYSTEMS = {"tmpfs", "ramfs"}
sys.path.append(ROOT)

from gateway.testing.processes import children  # noqa: E402

sys.path.insert(0, HERE)  # bench/ itself, also when a test loads this file from elsewhere
from idle import idle_note  # noqa: E402
from interpreter import interpreter_note  # noqa: E402


@dataclass(frozen=True)
class Cell:
    name: str
    length: int          # smtp-source -l: payload bytes per message
    sessions: int        # smtp-source -s: parallel connections
    messages: int        # smtp-source -m: messages in one run
    quick_messages: int
    per_connection: bool = False  # smtp-source -d: many messages over each connection

    def label(self) -> str:
        size = f"{self.length // 1024} KB" if self.length < 1 << 20 else f"{self.length >> 20} MB"
        conn = f"{self.sessions} connection{'s' if self.sessions > 1 else ''}"
        return f"{size}, {conn}" + (", many msgs/conn" if self.per_connection else "")


CELLS = [
    Cell("10k-1", 10 * 1024, 1, 1000, 300),
    Cell("10k-10", 10 * 1024, 10, 3000, 800),
    Cell("10k-50", 10 * 1024, 50, 3000, 1000),
    Cell("1m-10", 1 << 20, 10, 200, 60),
    Cell("10k-10-d", 10 * 1024, 10, 3000, 800, per_connection=True),
]


# -- process tree CPU --------------------------------------------------------------------------

def _stat_fields(pid: int) -> Optional[list[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def tree_cpu_seconds(root: int) -> float:
    """
    CPU seconds used by ``root`` and everything it started: for each live process of the tree
    its own utime+stime plus cutime+cstime (its reaped children, no longer in the tree).
    """
    total = 0
    todo = [root]
    seen = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))
        todo.extend(children(pid))
    return total / CLOCK_TICKS


# -- helpers -----------------------------------------------------------------------------------

def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` over IPv4 (state 0A in /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if row[3] == "0A" and int(row[1].split(":")[1], 16) == port)


def empty_directory(directory: str) -> None:
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))


def count_messages(*directories: str) -> int:
    """Messages in these directories: one ``.msg`` file each, beside any record (``.env``)."""
    return sum(name.endswith(".msg") for directory in directories for name in os.listdir(directory))


def count_files(directory: str) -> int:
    n = 0
    for _, _, files in os.walk(directory):
        n += len(files)
    return n


def wait_for_port(port: int, timeout: float, what: str, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise SystemExit(f"{what} exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer on port {port} within {timeout:.0f}s")


# -- the servers -------------------------------------------------------------------------------

class PostfixServer:
    name = "Postfix"

    def __init__(self, workdir: str, port: int) -> None:
        self.base = os.path.join(workdir, "postfix")
        self.config_dir = os.path.join(self.base, "etc")
        self.queue_dir = os.path.join(self.base, "queue")
        self.data_dir = os.path.join(self.base, "data")
        self.port = port

    def start(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            os.makedirs(d, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        # The postfix user must be able to reach its queue (the work directory is made 0755).
        os.chmod(self.base, 0o755)
        with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
            f.write(textwrap.dedent(f"""\
                compatibility_level = 3.6
                config_directory = {self.config_dir}
                queue_directory = {self.queue_dir}
                data_directory = {self.data_dir}
                myhostname = bench.localdomain
                mydestination =
                relayhost =
                inet_interfaces = 127.0.0.1
                inet_protocols = ipv4
                mynetworks = 127.0.0.0/8
                smtpd_relay_restrictions = permit_mynetworks, reject
                smtpd_data_restrictions = check_client_access static:HOLD
                smtpd_client_connection_count_limit = 0
                smtpd_client_connection_rate_limit = 0
                smtpd_client_message_rate_limit = 0
                default_process_limit = 200
                alias_maps =
                alias_database =
                local_recipient_maps =
                biff = no
                maillog_file = {self.base}/maillog
                maillog_file_prefixes = {self.base}
                """))
        with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
            f.write(self._master_cf())
        subprocess.run(["postfix", "-c", self.config_dir, "check"], check=True)
        subprocess.run(["postfix", "-c", self.config_dir, "start"], check=True, capture_output=True)
        wait_for_port(self.port, 30, "Postfix")

    def _master_cf(self) -> str:
        """Debian's master.cf with chroot off everywhere and smtpd on our port only."""
        lines = []
        with open("/etc/postfix/master.cf") as f:
            for line in f:
                if not line.strip() or line[0] in "# \t":
                    lines.append(line)
                    continue
                cols = line.split()
                if cols[0] == "smtp" and cols[1] == "inet":
                    cols[0] = f"127.0.0.1:{self.port}"
                elif cols[1] == "inet":
                    lines.append("#" + line)
                    continue
                if len(cols) >= 5:
                    cols[4] = "n"
                lines.append(" ".join(cols) + "\n")
        return "".join(lines)

    def root_pid(self) -> int:
        with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
            return int(f.read().split()[0])

    def queued(self) -> int:
        return count_files(os.path.join(self.queue_dir, "hold"))

    def clear(self) -> None:
        subprocess.run(["postsuper", "-c", self.config_dir, "-d", "ALL", "hold"], check=True,
                       capture_output=True)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", self.config_dir, "stop"], capture_output=True)


class GraphsmtpServer:
    name = "graphsmtp"

    def __init__(self, workdir: str, port: int, python: str, workers: int = 1, root: str = ROOT,
                 label: str = "", prelude: str = "") -> None:
        #: ``[gateway] workers``: with more than one, the table names the column "graphsmtp wN".
        self.workers = workers
        #: Python run in the daemon before twistd (bench/reactor_steps.py installs its probe).
        self.prelude = prelude
        #: The source tree it runs from (``--baseline``: an older checkout, named by ``label``).
        self.root = root
        self.name = ("graphsmtp" if workers == 1 else f"graphsmtp w{workers}") + label
        self.base = os.path.join(workdir, self.name.replace(" ", "-").replace("@", "-"))
        self.port = port
        self.python = python
        self.process: Optional[subprocess.Popen] = None
        self.spool = os.path.join(self.base, "state", "spool")

    def start(self) -> None:
        os.makedirs(self.base, exist_ok=True)
        config = os.path.join(self.base, "graphsmtp.toml")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                [gateway]
                hostname = "bench.localdomain"
                state_dir = "{self.base}/state"
                workers = {self.workers}

                [limits]
                max_connections = 500
                max_connections_per_ip = 500

                [[listener]]
                name = "bench"
                endpoint = "tcp:{self.port}:interface=127.0.0.1"
                trusted_networks = ["127.0.0.0/8"]

                [queue]
                hold_new = true

                [delivery]
                deliverer = "capture"
                """))
        log = open(os.path.join(self.base, "twistd.log"), "ab")
        env = dict(os.environ, PYTHONPATH=self.root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            [self.python, "-c", self.prelude + "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logfile=-", "graphsmtp", "--config", config],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env)
        wait_for_port(self.port, 60, "graphsmtp", alive=lambda: self.process.poll() is None)
        if self.workers > 1:
            # The main process listens at once; the workers accept once they have started.
            deadline = time.monotonic() + 120
            path = os.path.join(self.base, "twistd.log")
            while time.monotonic() < deadline:
                with open(path, "rb") as f:
                    if len(re.findall(rb"\[worker \d+\] listener bench accepting SMTP", f.read())) >= self.workers:
                        return
                if self.process.poll() is not None:
                    break
                time.sleep(0.2)
            raise SystemExit(f"graphsmtp: {self.workers} workers did not start listening; see {path}")

    def root_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def queued(self) -> int:
        return count_messages(os.path.join(self.spool, "held"), os.path.join(self.spool, "queue"))

    def clear(self) -> None:
        empty_directory(os.path.join(self.spool, "held"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PlainTwistedServer:
    """
    ``--plain-twisted``: bench/plain_twisted.py, Twisted's own ESMTP with one durable file per
    message and nothing else: how close Twisted's stock server comes to Postfix here.
    ``--lean-twisted``: behind a bare Protocol taking each read whole; ``--lean-spool``: that
    Protocol into graphsmtp's spool (how graphsmtp's distance splits: spool, SMTP session);
    ``--lean-checks``: and graphsmtp's checks of each message (the session's checks, its machinery).
    """

    def __init__(self, workdir: str, port: int, python: str, processes: int = 1, lean: bool = False,
                 gateway_spool: bool = False, checks: bool = False) -> None:
        self.name = ("lean" if lean else "plain") + " Twisted" + (f" x{processes}" if processes > 1 else "") + (
            " + checks" if checks else " + spool" if gateway_spool else "")
        self.processes = processes
        self.options = (["--lean"] if lean else []) + (["--gateway-spool"] if gateway_spool or checks else []) + (
            ["--checks"] if checks else [])
        self.base = os.path.join(workdir, self.name.replace(" ", "-"))
        self.port, self.python, self.held = port, python, os.path.join(self.base, "held")
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        os.makedirs(self.base, exist_ok=True)
        log = open(os.path.join(self.base, "server.log"), "ab")
        # Its own process group: stop() ends every process of it, even if the first one is gone.
        self.process = subprocess.Popen(
            [self.python, os.path.join(HERE, "plain_twisted.py"), "--port", str(self.port), "--spool", self.base,
             "--processes", str(self.processes)] + self.options,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
        wait_for_port(self.port, 60, self.name, alive=lambda: self.process.poll() is None)
        deadline = time.monotonic() + 60
        while listening_sockets(self.port) < self.processes:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"{self.name}: not all {self.processes} processes listen on port {self.port}")
            time.sleep(0.1)

    def root_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def queued(self) -> int:
        return count_messages(self.held)

    def clear(self) -> None:
        empty_directory(self.held)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# -- one run -----------------------------------------------------------------------------------

@dataclass
class Result:
    rate: float
    cpu_ms: float


@dataclass
class Samples:
    results: dict = field(default_factory=dict)  # (server, cell) -> [Result]

    def add(self, server: str, cell: str, result: Result) -> None:
        self.results.setdefault((server, cell), []).append(result)


def run_cell(server, cell: Cell, messages: int) -> Result:
    before_queue = server.queued()
    root = server.root_pid()
    cpu0 = tree_cpu_seconds(root)
    args = ["smtp-source", "-4", "-s", str(cell.sessions), "-m", str(messages), "-l", str(cell.length),
            "-f", "bench@sender.test", "-t", "sink@rcpt.test", "-M", "client.test"]
    if cell.per_connection:
        args.append("-d")
    args.append(f"127.0.0.1:{server.port}")
    t0 = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{server.name} {cell.name}: smtp-source failed ({done.returncode}): {done.stderr.strip()}")
    # What the server still owes the disk for this run is written now, inside the timed run, for
    # every server alike: graphsmtp retires its intake journal up to 0.1 s after a 250, while
    # Postfix flushed each file before its 250.
    settle_disk()
    elapsed = time.monotonic() - t0
    # smtp-source exits non-zero on any reply but the expected one, so every message was acknowledged.
    deadline = time.monotonic() + 30
    while server.queued() - before_queue < messages and time.monotonic() < deadline:
        time.sleep(0.2)  # Postfix's cleanup renames into hold/ just after the 250 goes out
    cpu = tree_cpu_seconds(root) - cpu0
    found = server.queued() - before_queue
    if found != messages:
        raise SystemExit(f"{server.name} {cell.name}: {messages} messages acknowledged, {found} in the queue")
    server.clear()
    settle_disk()
    return Result(messages / elapsed, cpu * 1000 / messages)


def run_order(servers: list, turn: int) -> list:
    """
    The servers in the order of run ``turn`` (0, 1, ...): each turn starts one server later, and
    every other pass through the list runs it backwards, so that no server always runs first or
    last in a cell, nor always right after the same server.  The VM's speed drifts within
    minutes, and a fixed order would hand the same position, and what the run before leaves
    behind, to the same server every time.
    """
    start = turn % len(servers)
    order = servers[start:] + servers[:start]
    return order if (turn // len(servers)) % 2 == 0 else order[::-1]


def settle_disk() -> None:
    """
    Write out what is pending for the disk, so that no server's run pays for another's: at the
    end of a run (timed with it) what the server had not yet flushed, and after its queue is
    emptied the deletions.  Otherwise the next server's first flushes would commit them, and the
    fixed order of the servers would decide who pays.
    """
    os.sync()


def on_a_real_disk(workdir: str) -> tuple[str, str]:
    """
    ``workdir`` (made if missing) as an absolute path, and its filesystem's type; exits when it
    is on one where fsync is free (tmpfs), since a durable commit would then cost nothing and
    the figures mean nothing.
    """
    from gateway.spool.filesystem import filesystem_type

    os.makedirs(workdir, exist_ok=True)
    workdir = os.path.abspath(workdir)
    fs = filesystem_type(workdir) or "a filesystem the mount table does not name"
    if fs in REFUSED_FILESYSTEMS:
        raise SystemExit(f"{workdir} is on {fs}: fsync is free there, so the comparison would be meaningless; "
                         "use --workdir on a real disk")
    return workdir, fs


def creation_note(directory: str, files: int = 200) -> str:
    """
    What a new file costs in ``directory`` (CPU, median of ``files``): graphsmtp creates two per
    message, Postfix one, and on ext4 without a journal the cost grows with the files deleted in
    the last minutes (docs/deployment.md, "The spool's filesystem"), so it is printed with the run.
    """
    from gateway.spool.filesystem import slow_creation_warning

    scratch = tempfile.mkdtemp(prefix="creation-", dir=directory)
    costs = []
    try:
        for n in range(files):
            start = time.process_time()
            os.close(os.open(os.path.join(scratch, str(n)), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            costs.append(time.process_time() - start)
    finally:
        shutil.rmtree(scratch)
    note = f"a new file here costs {median(costs) * 1e6:.0f} µs of CPU (graphsmtp makes 2 per message, Postfix 1)"
    warning = slow_creation_warning(directory)
    return note + (f"; this disk is {warning}" if warning else "")


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(samples: Samples, cells: list[Cell], name: str = "graphsmtp") -> str:
    rows = [f"| cell | Postfix msg/s | {name} msg/s | ratio | ratio per rep | reps at 1.0 or more | Postfix CPU ms/msg "
            f"| {name} CPU ms/msg |",
            "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        pf = samples.results.get(("Postfix", cell.name), [])
        gs = samples.results.get((name, cell.name), [])
        if not pf or not gs:
            continue
        pr, gr = median([r.rate for r in pf]), median([r.rate for r in gs])
        pc, gc = median([r.cpu_ms for r in pf]), median([r.cpu_ms for r in gs])
        # The same rep of both servers ran back to back: their ratio cancels most of the drift.
        ratios = [g.rate / p.rate for p, g in zip(pf, gs, strict=False)]
        per_rep = " ".join(f"{ratio:.2f}" for ratio in ratios)
        # A verdict on the pairs, not only on the ratio of two medians from different reps.
        # Rounded as printed, so a rep shown as 1.00 counts.
        at_least = sum(round(ratio, 2) >= 1.0 for ratio in ratios)
        rows.append(f"| {cell.label()} | {pr:,.0f} | {gr:,.0f} | **{gr / pr:.2f}** | {per_rep} "
                    f"| {at_least} of {len(ratios)} | {pc:.2f} | {gc:.2f} |")
    return "\n".join(rows)


def against_baseline(samples: Samples, cells: list[Cell], name: str, baseline: str) -> str:
    """Each cell's graphsmtp against the baseline's: msg/s and CPU ms/msg, medians."""
    rows = [f"| cell | {baseline} msg/s | {name} msg/s | change | {baseline} CPU ms/msg | {name} CPU ms/msg | change |",
            "|---|---|---|---|---|---|---|"]
    for cell in cells:
        old = samples.results.get((baseline, cell.name), [])
        new = samples.results.get((name, cell.name), [])
        if not old or not new:
            continue
        orate, nrate = median([r.rate for r in old]), median([r.rate for r in new])
        ocpu, ncpu = median([r.cpu_ms for r in old]), median([r.cpu_ms for r in new])
        rows.append(f"| {cell.label()} | {orate:,.0f} | {nrate:,.0f} | {nrate / orate - 1:+.0%} "
                    f"| {ocpu:.2f} | {ncpu:.2f} | {ncpu / ocpu - 1:+.0%} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every cell (default 3)")
    parser.add_argument("--quick", action="store_true", help="fewer messages per run (a short run on a shared machine)")
    parser.add_argument("--cells", nargs="*", default=[c.name for c in CELLS],
                        help="cells to run: " + ", ".join(c.name for c in CELLS))
    parser.add_argument("--workdir", help="work directory on a real disk (default: a new one under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="graphsmtp's [gateway] workers; several values run one graphsmtp each, "
                             "interleaved with Postfix (e.g. --workers 1 2)")
    parser.add_argument("--plain-twisted", type=int, nargs="*", metavar="PROCESSES",
                        help="also bench/plain_twisted.py (Twisted's own ESMTP, one durable file per message, nothing "
                             "else) in this many processes (default 1; e.g. --plain-twisted 1 2), interleaved")
    parser.add_argument("--lean-twisted", type=int, nargs="*", metavar="PROCESSES",
                        help="the same with a bare Protocol taking each read whole (plain_twisted.py --lean)")
    parser.add_argument("--lean-spool", action="store_true",
                        help="also that Protocol into graphsmtp's own spool, committed as the daemon commits "
                             "(its commit child)")
    parser.add_argument("--lean-checks", action="store_true",
                        help="also that Protocol on graphsmtp's spool doing graphsmtp's checks of each message "
                             "(addresses, guard, framing, Received line, mail grammar, log line), without its session")
    parser.add_argument("--baseline", help="also run the graphsmtp of this source tree (an older checkout, "
                                           "e.g. a git worktree), interleaved, with the first --workers value")
    options = parser.parse_args()
    cells = [c for c in CELLS if c.name in options.cells]
    unknown = set(options.cells) - {c.name for c in CELLS}
    if unknown:
        parser.error(f"unknown cell(s): {', '.join(sorted(unknown))}")
    if options.reps < 1:
        parser.error("--reps must be at least 1")
    if os.geteuid() != 0:
        raise SystemExit("run as root: a private Postfix instance must be started by root")
    for tool in ("smtp-source", "postfix", "postsuper"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install Debian's postfix package")
    workdir, fs = on_a_real_disk(options.workdir or tempfile.mkdtemp(prefix="compare-postfix-", dir="/var/tmp"))
    os.chmod(workdir, 0o755)
    # Ports below the kernel's own range, none twice: no other connection takes one before its server binds it.
    from gateway.testing.ports import PortPicker

    ports = PortPicker()
    postfix = PostfixServer(workdir, ports.port())
    if any(n < 1 for n in options.workers):
        parser.error("--workers must be at least 1")
    contenders = [GraphsmtpServer(workdir, ports.port(), options.python, n) for n in dict.fromkeys(options.workers)]
    if options.baseline:
        baseline = os.path.abspath(options.baseline)
        if not os.path.isdir(os.path.join(baseline, "gateway")):
            parser.error(f"--baseline {baseline}: no gateway/ package there")
        baseline_server = GraphsmtpServer(workdir, ports.port(), options.python, options.workers[0], root=baseline,
                                          label="@" + os.path.basename(baseline.rstrip("/")))
        contenders.append(baseline_server)
    plains = [PlainTwistedServer(workdir, ports.port(), options.python, n, lean)
              for lean, counts in ((False, options.plain_twisted), (True, options.lean_twisted)) if counts is not None
              for n in dict.fromkeys(counts or [1])]
    plains += [PlainTwistedServer(workdir, ports.port(), options.python, 1, True, True)] if options.lean_spool else []
    plains += [PlainTwistedServer(workdir, ports.port(), options.python, 1, True, checks=True)] if options.lean_checks else []
    if any(p.processes < 1 for p in plains):
        parser.error("--plain-twisted and --lean-twisted need at least 1 process")
    contenders.extend(plains)
    samples = Samples()
    # A SIGTERM (a killed run) unwinds like Ctrl-C, so the servers below are stopped, not left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        postfix.start()
        for contender in contenders:
            contender.start()
        print(f"work directory {workdir} ({fs}); Postfix on port {postfix.port}, "
              + ", ".join(f"{g.name} on port {g.port}" for g in contenders))
        print(creation_note(workdir))
        print(idle_note())
        print(interpreter_note(options.python))
        for rep in range(1, options.reps + 1):
            for index, cell in enumerate(cells):
                messages = cell.quick_messages if options.quick else cell.messages
                for server in run_order([postfix, *contenders], rep - 1 + index):
                    result = run_cell(server, cell, messages)
                    samples.add(server.name, cell.name, result)
                    print(f"rep {rep} {cell.name:9} {server.name:16} {messages:5} msgs "
                          f"{result.rate:8.1f} msg/s {result.cpu_ms:6.2f} CPU ms/msg", flush=True)
    finally:
        for contender in contenders:
            contender.stop()
        postfix.stop()
        if not options.keep and not options.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"medians of {options.reps} interleaved reps; every acknowledged message was found in the queue")
    for contender in contenders:
        print()
        print(table(samples, cells, contender.name))
    if options.baseline:
        print()
        print(against_baseline(samples, cells, contenders[0].name, baseline_server.name))
    if plains:
        print()
        print(f"{contenders[0].name} against {plains[0].name}:")
        print(against_baseline(samples, cells, contenders[0].name, plains[0].name))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted; the servers were stopped") from None
