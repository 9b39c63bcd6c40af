#!/usr/bin/env python
"""
Spool benchmarks: durable acceptance rate and start-up recovery of a large queue.

    python bench/bench_spool.py                     # 10 KB and 1 MB, 10 concurrent writers,
                                                    # plus a 20 MB message against a slow disk
    python bench/bench_spool.py --writers 20 --seconds 10 --threads 8
    python bench/bench_spool.py --recovery 100000   # also: recover a 100k-entry queue
    python bench/bench_spool.py --recovery 100000 --drain   # ...and deliver all of it (null deliverer)

Acceptance runs the real DirectorySpool on the real reactor with its own thread pool, exactly
the intake path: open_writer, write in 64 KiB pieces (as SMTP reads arrive), commit (fsync
file + record, renames, group-committed directory fsync).  Targets (issue 2, 2 cores):
~700 msgs/s for 10 KB and ~135 msgs/s for 1 MB over 10 connections.

Recovery fills a spool with N entries (without fsync, to fill it fast), then times
recover_schedule() (what the queue runner does at start) and, with --full, the contract
recover() that loads every record.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task  # noqa: E402

from gateway.config.model import QueueConfig  # noqa: E402
from gateway.delivery.interfaces import Delivered  # noqa: E402
from gateway.queue.runner import QueueRunner  # noqa: E402
from gateway.spool.disk import SpoolDisk  # noqa: E402
from gateway.spool.entry import Envelope, Provenance, SpoolEntry  # noqa: E402
from gateway.spool.fileops import FileOps  # noqa: E402
from gateway.spool.queueid import new_queue_id  # noqa: E402
from gateway.spool.store import DirectorySpool  # noqa: E402
from gateway.threads import ThreadPoolService  # noqa: E402

ENVELOPE = Envelope("bench@example.com", ("a@example.com", "b@example.com"))
PROVENANCE = Provenance("192.0.2.1", "bench.example", "default", tls=True, auth_identity="bench")
PIECE = 64 * 1024


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_message(size: int) -> bytes:
    header = b"From: bench@example.com\r\nTo: a@example.com\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(header)) // len(line) + 1)
    return (header + body)[:size - 2] + b"\r\n"


@defer.inlineCallbacks
def accept_rate(spool: DirectorySpool, size: int, writers: int, seconds: float):
    message = make_message(size)
    pieces = [message[i:i + PIECE] for i in range(0, len(message), PIECE)]
    done = 0
    latencies = []
    deadline = time.monotonic() + seconds

    @defer.inlineCallbacks
    def one_writer():
        nonlocal done
        while time.monotonic() < deadline:
            start = time.monotonic()
            writer = yield spool.open_writer()
            paused = []
            writer.set_flow_control(lambda paused=paused: paused.append(1), lambda paused=paused: paused.clear())
            for piece in pieces:
                writer.write(piece)
                if paused:
                    # like a paused transport: wait until the writer resumes us
                    while paused:
                        yield task.deferLater(reactor, 0.001, lambda: None)
            yield writer.commit(ENVELOPE, PROVENANCE)
            latencies.append(time.monotonic() - start)
            done += 1

    start = time.monotonic()
    fsyncs_before = spool.disk.queue_sync.fsyncs
    yield defer.gatherResults([one_writer() for _ in range(writers)], consumeErrors=True)
    elapsed = time.monotonic() - start
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0
    print(f"  {size // 1024:>6} KB x {writers:>2} writers: {done / elapsed:8.1f} msgs/s "
          f"{done * size / elapsed / 1e6:7.1f} MB/s  commit p50 {p50:6.1f} ms p99 {p99:6.1f} ms  "
          f"dir fsyncs/msg {(spool.disk.queue_sync.fsyncs - fsyncs_before) / max(done, 1):.2f}  "
          f"max RSS {rss_mb():.0f} MB")


class _SlowDisk(FileOps):
    """A disk that takes ``delay`` seconds per write call (the client is faster than the disk)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def write(self, fd, data):
        time.sleep(self.delay)
        super().write(fd, data)


@defer.inlineCallbacks
def big_message(base: str, pool, megabytes: int):
    """One huge message against a slow disk: back-pressure must keep memory flat."""
    spool = DirectorySpool(os.path.join(base, "big"), pool, reactor, fileops=_SlowDisk(0.01))
    yield spool.recover_schedule()
    rss_before = rss_mb()
    writer = yield spool.open_writer()
    state = {"paused": False, "pauses": 0, "max_backlog": 0}

    def pause():
        state["paused"] = True
        state["pauses"] += 1

    def resume():
        state["paused"] = False

    writer.set_flow_control(pause, resume)
    piece = b"y" * 998 + b"\r\n"
    chunk = b"Subject: big\r\n\r\n" + piece * 64
    t = time.monotonic()
    sent = 0
    while sent < megabytes * 1024 * 1024:
        while state["paused"]:
            yield task.deferLater(reactor, 0.001, lambda: None)
        writer.write(chunk)
        sent += len(chunk)
        state["max_backlog"] = max(state["max_backlog"], writer._pending_bytes)
    entry = yield writer.commit(ENVELOPE, PROVENANCE)
    print(f"  {megabytes} MB message, disk 10 ms per write: {time.monotonic() - t:.1f}s, "
          f"{state['pauses']} pauses, max backlog in memory {state['max_backlog'] / 1024:.0f} KiB, "
          f"max RSS {rss_before:.0f} -> {rss_mb():.0f} MB, stored {entry.size} bytes")
    spool.close()


class _NoSync(FileOps):
    def sync_file(self, fd):
        pass

    def sync_dir(self, path, fd=None):
        pass


def fill(directory: str, count: int, now: float) -> None:
    disk = SpoolDisk(directory, _NoSync())
    disk.ensure_directories()
    message = make_message(2048)
    for i in range(count):
        temp = disk.create_temp(new_queue_id(now + i * 1e-6))
        disk.append(temp, [message])
        entry = SpoolEntry(temp.queue_id, ENVELOPE, PROVENANCE, now, "", temp.size,
                           attempts=i % 3, next_attempt_at=(now + 3600 if i % 2 else 0.0))
        disk.publish(temp, entry)


class NullDeliverer:
    def deliver(self, entry):
        return defer.succeed(Delivered())


@defer.inlineCallbacks
def recovery(directory: str, pool, count: int, full: bool, drain: bool):
    print(f"filling a spool with {count} entries (no fsync) ...")
    t = time.monotonic()
    fill(directory, count, time.time())
    print(f"  filled in {time.monotonic() - t:.1f}s")
    rss0 = rss_mb()
    spool = DirectorySpool(directory, pool, reactor)
    t = time.monotonic()
    schedule = yield spool.recover_schedule()
    print(f"  recover_schedule: {len(schedule)} entries in {time.monotonic() - t:.2f}s "
          f"(max RSS {rss0:.0f} -> {rss_mb():.0f} MB)")
    if full:
        t = time.monotonic()
        entries = yield spool.recover()
        print(f"  recover (load every record): {len(entries)} entries in {time.monotonic() - t:.2f}s "
              f"(max RSS {rss_mb():.0f} MB)")
        del entries
    if drain:
        runner = QueueRunner(spool, NullDeliverer(), QueueConfig(concurrency=32), reactor)
        t = time.monotonic()
        runner.startService()
        yield runner.ready
        print(f"  runner ready (schedule built) in {time.monotonic() - t:.2f}s; "
              f"{runner.queued} queued, {sum(1 for d, _ in schedule if d <= time.time())} due now")
        due = sum(1 for d, _ in schedule if d <= time.time())
        while runner.stats.delivered < due:
            yield task.deferLater(reactor, 0.2, lambda: None)
        elapsed = time.monotonic() - t
        print(f"  delivered {runner.stats.delivered} due entries in {elapsed:.1f}s "
              f"({runner.stats.delivered / elapsed:.0f}/s, null deliverer)")
        yield runner.stopService()
    spool.close()


@defer.inlineCallbacks
def run(args):
    pool_service = ThreadPoolService("bench-spool", 1, args.threads)
    pool_service.startService()
    base = tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir)
    try:
        print(f"spool in {base}, {args.threads} spool threads")
        for size in (10 * 1024, 1024 * 1024):
            directory = os.path.join(base, f"accept-{size}")
            spool = DirectorySpool(directory, pool_service.pool, reactor)
            yield spool.recover_schedule()
            yield accept_rate(spool, size, args.writers, args.seconds)
            spool.close()
            shutil.rmtree(directory)
        if args.big:
            yield big_message(base, pool_service.pool, args.big)
        if args.recovery:
            yield recovery(os.path.join(base, "recovery"), pool_service.pool, args.recovery, args.full, args.drain)
    finally:
        pool_service.stopService()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4, help="spool thread pool size (config spool.threads)")
    parser.add_argument("--recovery", type=int, default=0, metavar="N", help="also benchmark recovery of N entries")
    parser.add_argument("--full", action="store_true", help="with --recovery: also time the full recover()")
    parser.add_argument("--drain", action="store_true", help="with --recovery: deliver every due entry (null deliverer)")
    parser.add_argument("--big", type=int, default=20, metavar="MB",
                        help="also stream one message of this size to a slow disk (0: skip)")
    parser.add_argument("--dir", default=None, help="where to create the spool (default: $TMPDIR)")
    args = parser.parse_args()
    result = {}

    def finished(outcome):
        result["outcome"] = outcome
        reactor.stop()

    reactor.callWhenRunning(lambda: run(args).addBoth(finished))
    reactor.run()
    outcome = result.get("outcome")
    if hasattr(outcome, "printTraceback"):
        outcome.printTraceback(file=sys.stdout)
        sys.exit(1)


if __name__ == "__main__":
    main()
