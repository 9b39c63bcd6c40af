#!/usr/bin/env python
"""
Why intake's group commits run in a process of their own (issue 13): the spool's commit
(L{gateway.spool.accept.Acceptor.publish_batch}: temp files written, renamed, one flush) timed
alone, beside a busy Python thread, and beside a busy process.

The busy neighbour does what the daemon's reactor thread does under load: Python for a while,
then a short system call (a socket write and read), over and over.  Each of the commit's short
system calls gives the GIL up and must take it back; beside a busy thread it waits for it
(CPython's convoy effect), beside a busy process it does not.

    python bench/gil_convoy.py --workdir /mnt/spool-disk/bench    # a real disk, not tmpfs
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.spool.accept import Acceptor, CommitRequest  # noqa: E402
from gateway.spool.entry import Envelope, Provenance, SpoolEntry  # noqa: E402
from gateway.spool.fileops import FileOps  # noqa: E402
from gateway.spool.layout import SpoolFiles  # noqa: E402
from gateway.spool.queueid import new_queue_id  # noqa: E402

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 125
ENVELOPE = Envelope("a@example.com", ("b@example.com",))
PROVENANCE = Provenance("127.0.0.1", "client.test", "bench", tls=False)


def busy(stop: object) -> None:
    """About 50 µs of Python, then a short system call, until ``stop`` is set."""
    a, b = socket.socketpair()
    while not stop.is_set():  # type: ignore[attr-defined]
        total = 0
        for i in range(1000):
            total += i
        a.send(b"x")
        b.recv(16)


def commits(acceptor: Acceptor, count: int, batch: int) -> tuple[float, float]:
    """Wall and CPU time per message of ``count`` messages committed ``batch`` at a time."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(count // batch):
        now = time.time()
        acceptor.publish_batch([
            CommitRequest(SpoolEntry(queue_id=new_queue_id(now), envelope=ENVELOPE, provenance=PROVENANCE,
                                     received_at=now, message_path="", size=0), "held", data=MESSAGE)
            for _ in range(batch)])
    done = (count // batch) * batch
    return (time.perf_counter() - wall) / done, (time.thread_time() - cpu) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where to make the spool (default: a new directory under /var/tmp)")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--batch", type=int, default=5, help="messages per commit batch (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="gil-convoy-", dir=args.workdir or "/var/tmp")
    try:
        files = SpoolFiles(base, FileOps(), "bench", time.time)
        files.ensure_directories()
        acceptor = Acceptor(files)
        commits(acceptor, 20, 1)  # warm-up
        print(f"{args.messages} messages of {len(MESSAGE)} bytes, {args.batch} per batch, in {base}")
        for round_ in range(1, args.rounds + 1):
            for neighbour in ("nothing", "a busy thread", "a busy process"):
                if neighbour == "a busy thread":
                    stop: object = threading.Event()
                    worker: object = threading.Thread(target=busy, args=(stop,))
                elif neighbour == "a busy process":
                    context = multiprocessing.get_context("spawn")
                    stop = context.Event()
                    worker = context.Process(target=busy, args=(stop,))
                else:
                    stop = worker = None
                if worker is not None:
                    worker.start()  # type: ignore[attr-defined]
                    time.sleep(0.5)  # the process has started its loop
                try:
                    wall, cpu = commits(acceptor, args.messages, args.batch)
                finally:
                    if worker is not None:
                        stop.set()  # type: ignore[attr-defined]
                        worker.join()  # type: ignore[attr-defined]
                print(f"round {round_}: beside {neighbour:15} {wall * 1e6:9.0f} µs per message "
                      f"({cpu * 1e6:5.0f} µs of this thread's CPU)")
                for name in os.listdir(files.layout.held):
                    os.unlink(os.path.join(files.layout.held, name))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
