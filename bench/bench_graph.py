#!/usr/bin/env python
"""
Benchmark of Graph delivery: memory and throughput while streaming big messages to Graph.

The fake Graph runs in a separate process (``graphsmtp-fake-graph``, so its own buffering does
not count), the real GraphDeliverer in this one: MSAL in its thread pool, treq over TLS with
the base64 body streamed from the spool file.  Two paths:

- ``sendmail``: one ``POST /sendMail`` whose base64 body is the whole message (the fake's and
  the gateway's request limits are raised so a big message takes this path): invariant 2 says
  RSS must not grow with message size.
- ``upload``: the large-message path (draft + upload session); chunks of
  ``upload_chunk_size`` (3.2 MiB) are the only thing held in memory.

    python bench/bench_graph.py                      # 60 MB through both paths
    python bench/bench_graph.py --size 20 --count 5  # five 20 MB messages

Prints, per path: MB/s of message data, and this process's RSS before, at peak (sampled every
10 ms on the reactor) and after.

Figures on the 2-core development VM (noisy, other work running; the fake shares the cores):

    sendmail   1 x 60 MB: ~16 MB/s, RSS 63 MB before, 74 MB peak (an 80 MB base64 body: +11 MB)
    upload     1 x 60 MB: ~40 MB/s, RSS 75 MB before, 87 MB peak (3.2 MiB chunks)
    sendmail   8 x 20 MB: ~23 MB/s, RSS 77 -> 89 MB peak, flat from the first message on
    upload     8 x 20 MB: ~40 MB/s, RSS 89 -> 109 MB peak, flat from the first message on
"""

from __future__ import annotations

import argparse
import email.policy
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from email.message import EmailMessage

from twisted.internet import defer, task

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gateway.config.loader import build_config  # noqa: E402
from gateway.delivery.graph.factory import build_graph_deliverer  # noqa: E402
from gateway.delivery.interfaces import Delivered  # noqa: E402
from gateway.spool.entry import Envelope, Provenance, SpoolEntry  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def write_message(directory: str, size_mb: int, index: int) -> str:
    m = EmailMessage()
    m["From"] = "alice@contoso.test"
    m["To"] = "bob@fabrikam.test"
    m["Subject"] = f"bench {index}"
    m.set_content("see attachment\n")
    m.add_attachment(os.urandom(size_mb * 1000 * 1000), maintype="application", subtype="octet-stream",
                     filename="data.bin")
    path = os.path.join(directory, f"m{index}.eml")
    with open(path, "wb") as f:
        f.write(m.as_bytes(policy=email.policy.SMTP))
    del m
    return path


def start_fake(directory: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.testing.fake_graph_cli", "--directory", directory, "--port", "0",
         "--max-request-size", str(400 * 1000 * 1000)],
        stdout=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("fake Graph did not start")
        lines.append(line)
        if line.startswith("ca_bundle"):
            break
    text = "".join(lines)
    return proc, tomllib.loads(text[text.index("[graph]"):])


@defer.inlineCallbacks
def run(reactor, args):
    work = tempfile.mkdtemp(prefix="bench-graph-")
    proc, section = start_fake(os.path.join(work, "fake"))
    try:
        paths = [write_message(work, args.size, i) for i in range(args.count)]
        total_mb = sum(os.path.getsize(p) for p in paths) / 1e6
        for path_name, overrides in (("sendmail", {"max_request_size": "150MB", "max_message_size": "150MB"}),
                                     ("upload", {"max_message_size": "150MB"})):
            graph = dict(section["graph"], mailbox_rate=6000, **overrides)
            config = build_config({"graph": graph}, {}, {}, work).graph
            deliverer, services = build_graph_deliverer(config, reactor)
            for s in services:
                s.startService()
            peak = [rss_mb()]
            sampler = task.LoopingCall(lambda peak=peak: peak.append(max(peak[-1], rss_mb())))
            sampler.start(0.01)
            before = rss_mb()
            started = time.monotonic()
            for i, path in enumerate(paths):
                entry = SpoolEntry(f"B{i}", Envelope("alice@contoso.test", ("bob@fabrikam.test",)),
                                   Provenance("127.0.0.1", "bench", "bench"), 0.0, path, os.path.getsize(path))
                outcome = yield deliverer.deliver(entry)
                if not isinstance(outcome, Delivered):
                    raise SystemExit(f"{path_name}: {outcome!r}")
            elapsed = time.monotonic() - started
            sampler.stop()
            for s in reversed(services):
                yield s.stopService()
            print(f"{path_name:9} {args.count} x {args.size} MB: {total_mb / elapsed:6.1f} MB/s, "
                  f"RSS {before:.0f} MB before, {max(peak):.0f} MB peak, {rss_mb():.0f} MB after; "
                  f"paths {deliverer.stats.paths}")
    finally:
        proc.terminate()
        proc.wait()
        for name in os.listdir(work):
            if name.endswith(".eml"):
                os.unlink(os.path.join(work, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=60, help="attachment size in MB (default 60)")
    parser.add_argument("--count", type=int, default=1, help="messages per path (default 1)")
    args = parser.parse_args()
    task.react(run, (args,))


if __name__ == "__main__":
    main()
