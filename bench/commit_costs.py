#!/usr/bin/env python
"""
What one durable commit costs on this disk (issue 13): the spool's own commit
(L{gateway.spool.accept.Acceptor.publish_batch}) with its whole-filesystem flush and with the
commit process's intake journal (L{gateway.spool.journal}), against what Postfix does for a
message (one new queue file, written and fsynced).  A lone message per commit, as with one
client; ``--batch`` for more.

The flush of the filesystem (``syncfs``) makes the filesystem commit its own journal: the new
files and the renames.  A write into blocks that are allocated and written already changes no
metadata, so the journal's ``fdatasync`` is the data and one device flush.

    python bench/commit_costs.py --workdir /mnt/spool-disk/bench    # a real disk, not tmpfs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.spool.accept import Acceptor, CommitRequest  # noqa: E402
from gateway.spool.entry import Envelope, Provenance, SpoolEntry  # noqa: E402
from gateway.spool.fileops import FileOps  # noqa: E402
from gateway.spool.journal import IntakeJournal, boot_id, journal_path  # noqa: E402
from gateway.spool.layout import SpoolFiles  # noqa: E402
from gateway.spool.queueid import new_queue_id  # noqa: E402

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 125
ENVELOPE = Envelope("a@example.com", ("b@example.com",))
PROVENANCE = Provenance("127.0.0.1", "client.test", "bench", tls=False)


def requests(batch: int) -> list[CommitRequest]:
    now = time.time()
    return [CommitRequest(SpoolEntry(queue_id=new_queue_id(now), envelope=ENVELOPE, provenance=PROVENANCE,
                                     received_at=now, message_path="", size=0), "held", data=MESSAGE)
            for _ in range(batch)]


def postfix_like(directory: str) -> Callable[[int], None]:
    """One new file per message, written and fsynced (Postfix's cleanup, without its rename)."""
    counter = [0]

    def commit(batch: int) -> None:
        for _ in range(batch):
            counter[0] += 1
            fd = os.open(os.path.join(directory, f"q{counter[0]}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                os.write(fd, MESSAGE + b"x" * 600)  # the record's bytes too
                os.fsync(fd)
            finally:
                os.close(fd)
    return commit


def journaled(acceptor: Acceptor, journal: IntakeJournal, batch: int) -> None:
    """A commit with the journal, and its retirement when due, as the commit process does (its time counted)."""
    acceptor.publish_batch(requests(batch), journal=journal)
    if journal.retire_in() == 0:
        journal.retire()


def timed(commit: Callable[[int], None], count: int, batch: int) -> tuple[float, float]:
    """Median and mean wall time per message over ``count`` messages committed ``batch`` at a time."""
    times = []
    for _ in range(max(1, count // batch)):
        start = time.perf_counter()
        commit(batch)
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times), statistics.mean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where to make the spool (default: a new directory under /var/tmp)")
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--batch", type=int, default=1, help="messages per commit (default 1)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="commit-costs-", dir=args.workdir or "/var/tmp")
    try:
        ops = FileOps()
        files = SpoolFiles(base, ops, "bench", time.time)
        files.ensure_directories()
        acceptor = Acceptor(files)
        boot = boot_id()
        if boot is None or not ops.flushes_whole_filesystem:
            sys.exit("needs Linux 5.8 or later (syncfs) and a boot id: the journal is not used elsewhere")
        journal = IntakeJournal(ops, journal_path(files.layout.tmp, files.tag, os.getpid()), boot)
        plain = os.path.join(base, "postfix-like")
        os.mkdir(plain)
        ways = {
            "Postfix-like: one new file, fsync": postfix_like(plain),
            "graphsmtp, flush of the filesystem": lambda n: acceptor.publish_batch(requests(n)) and None,
            "graphsmtp, intake journal": lambda n: journaled(acceptor, journal, n),
        }
        print(f"{args.messages} messages of {len(MESSAGE)} bytes, {args.batch} per commit, in {base}")
        for round_ in range(1, args.rounds + 1):
            for name, commit in ways.items():
                median, mean = timed(commit, args.messages, args.batch)
                print(f"round {round_}: {name:38} {median * 1e6:7.0f} µs per message (median), "
                      f"{mean * 1e6:7.0f} (mean, retirements included)")
                journal.retire()  # what the commit process does within RETIRE_AFTER
                for directory in (files.layout.held, plain):
                    for entry in os.listdir(directory):
                        os.unlink(os.path.join(directory, entry))
        journal.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
