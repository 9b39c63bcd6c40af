#!/usr/bin/env python
"""
Benchmark of SMTP intake: messages per second and memory of the gateway's ESMTP listener.

The server (GatewaySMTPFactory on a loopback port) runs in this process on the real reactor,
spooling into the real DirectorySpool (fsync, rename, directory fsync — durable acceptance) or,
with ``--memory``, into MemorySpool (protocol cost only).  Clients are separate processes (this
script with ``--client``), each holding one connection and sending messages back to back with
MAIL/RCPT/DATA pipelined, so client Python does not compete with the server for the GIL.

For a comparison with Postfix use bench/compare_postfix.py: it runs both servers side by side
under the same load and reports the ratio per cell (absolute figures from separate runs on a
shared machine are not comparable).

    python bench/bench_intake.py                         # 10 KB x 3000 over 10 connections
    python bench/bench_intake.py --size 1024 --messages 400
    python bench/bench_intake.py --size 20480 --messages 5 --connections 1   # RSS stays flat
    python bench/bench_intake.py --memory                # without the disk

Prints messages/s, MB/s, the server's CPU per message and its RSS before, at peak and after.

Figures on the 2-core development VM (clients on the same cores; noisy, other work running):

    --memory            10 KB: ~1900 msgs/s, 0.5 ms server CPU/msg (0.66 with --policy)
    DirectorySpool      10 KB: ~400-530 msgs/s, ~2.7 ms server CPU/msg, of which ~1.8 ms is
                        system time in the spool's fsync/rename work; bench_spool.py alone
                        does ~800/s, so the box is CPU-bound with intake + spool + clients
    DirectorySpool      1 MB: ~80-110 msgs/s; DATA framing costs ~4 ms/MB of reactor time
                        (find end marker, 3 counts for bare CR/LF, unstuffing replace)
    DirectorySpool      20 MB x 5, one connection: RSS 52 MB before, 56 MB peak (flat)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_message(size_kb: int) -> bytes:
    header = b"From: bench@sender.test\r\nTo: sink@rcpt.test\r\nSubject: bench\r\n\r\n"
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-abcdefghijklmn\r\n"
    body = line * max(1, (size_kb * 1024 - len(header)) // len(line))
    return header + body


def read_replies(sock: socket.socket, buf: bytearray, count: int) -> list[bytes]:
    """Read ``count`` final reply lines (continuation lines of EHLO skipped)."""
    replies: list[bytes] = []
    while len(replies) < count:
        eol = buf.find(b"\r\n")
        if eol < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"server closed the connection; got {replies!r}")
            buf += chunk
            continue
        line = bytes(buf[:eol])
        del buf[: eol + 2]
        if line[3:4] != b"-":
            replies.append(line)
    return replies


def client(port: int, count: int, size_kb: int) -> None:
    message = make_message(size_kb)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    read_replies(sock, buf, 1)
    sock.sendall(b"EHLO bench.client.test\r\n")
    read_replies(sock, buf, 1)
    envelope = b"MAIL FROM:<bench@sender.test> SIZE=%d\r\nRCPT TO:<sink@rcpt.test>\r\nDATA\r\n" % len(message)
    data = message + b".\r\n"
    start = time.time()
    for _ in range(count):
        sock.sendall(envelope)
        replies = read_replies(sock, buf, 3)
        if not replies[2].startswith(b"354"):
            raise RuntimeError(f"unexpected {replies!r}")
        sock.sendall(data)
        [reply] = read_replies(sock, buf, 1)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"unexpected {reply!r}")
    end = time.time()
    sock.sendall(b"QUIT\r\n")
    read_replies(sock, buf, 1)
    sock.close()
    print(json.dumps({"start": start, "end": end, "count": count}))


def server(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.threads import deferToThread

    from gateway.config.model import Limits, ListenerConfig
    from gateway.policy.chain import PolicyChain
    from gateway.policy.interfaces import Continue
    from gateway.smtp.factory import GatewaySMTPFactory
    from gateway.smtp.listener import listener_service

    class PassPolicy:
        def on_connect(self, session):
            return Continue()

        on_mail_from = on_rcpt_to = on_message = lambda self, session, arg: Continue()

    threadpool = None
    directory = None
    if not args.memory:
        try:
            import gateway.spool.store  # noqa: F401
        except ImportError as e:
            print(f"DirectorySpool not available ({e}); using MemorySpool", file=sys.stderr)
            args.memory = True
    if args.memory:
        from gateway.testing.memory_spool import MemorySpool

        class CountingMemorySpool(MemorySpool):
            """MemorySpool that forgets committed messages (the benchmark sends many)."""

            def open_writer(self):
                del self.messages[:], self.writers[:]
                return super().open_writer()

        spool = CountingMemorySpool()
        kind = "memory (no disk)"
    else:
        from gateway.spool.store import DirectorySpool
        from gateway.threads import ThreadPoolService

        directory = args.dir or tempfile.mkdtemp(prefix="bench-intake-")
        threadpool = ThreadPoolService("bench-spool", 1, args.threads)
        threadpool.startService()
        spool = DirectorySpool(os.path.join(directory, "spool"), threadpool.pool, reactor)
        kind = f"DirectorySpool at {directory} ({args.threads} threads)"

    limits = Limits(max_message_size=max(64 * 1024 * 1024, args.size * 1024 * 2), max_connections=1000,
                    max_connections_per_ip=1000, max_messages_per_session=10 ** 9)
    listener = ListenerConfig(name="bench", endpoint="tcp:0:interface=127.0.0.1", limits=limits)
    chain = PolicyChain([PassPolicy()] if args.policy else [])
    factory = GatewaySMTPFactory(listener, "bench.gw.test", spool, chain, reactor)
    service = listener_service(reactor, listener, factory)
    results: dict = {}

    def run_clients(port: int) -> list[dict]:
        per_client = args.messages // args.connections
        procs = [
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--client", "--port", str(port),
                 "--messages", str(per_client), "--size", str(args.size)],
                stdout=subprocess.PIPE, text=True,
            )
            for _ in range(args.connections)
        ]
        out = []
        for p in procs:
            stdout, _ = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"client failed with {p.returncode}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out

    @inlineCallbacks
    def main():
        try:
            service.startService()
            port = yield service.when_listening()
            results["rss_before"] = rss_mb()
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            clients = yield deferToThread(run_clients, port.getHost().port)
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            results["cpu"] = (cpu_after.ru_utime - cpu_before.ru_utime, cpu_after.ru_stime - cpu_before.ru_stime)
            results["clients"] = clients
            results["rss_after"] = rss_mb()
            yield service.stopService()
            yield factory.drain()
        finally:
            reactor.stop()

    reactor.callWhenRunning(main)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(reactor.run)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        reactor.run()
    if threadpool is not None:
        threadpool.stopService()
    if directory and not args.dir and not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    clients = results.get("clients")
    if not clients:
        sys.exit("benchmark failed")
    total = sum(c["count"] for c in clients)
    elapsed = max(c["end"] for c in clients) - min(c["start"] for c in clients)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"spool:       {kind}{', with a pass-through policy' if args.policy else ''}")
    print(f"messages:    {total} x {args.size} KB over {args.connections} connections in {elapsed:.2f} s")
    print(f"throughput:  {total / elapsed:.0f} msgs/s, {total * args.size / 1024 / elapsed:.1f} MB/s")
    user, system = results["cpu"]
    print(f"server CPU:  {(user + system) / total * 1000:.2f} ms per message ({user:.2f} s user, {system:.2f} s system;"
          f" clients run on the same cores)")
    print(f"server RSS:  {results['rss_before']:.1f} MB before, {peak:.1f} MB peak, {results['rss_after']:.1f} MB after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000, help="total messages (default 3000)")
    parser.add_argument("--size", type=int, default=10, help="message size in KB (default 10)")
    parser.add_argument("--connections", type=int, default=10, help="parallel client connections (default 10)")
    parser.add_argument("--memory", action="store_true", help="MemorySpool instead of the durable DirectorySpool")
    parser.add_argument("--policy", action="store_true", help="add a pass-through policy (end-of-data flush + header parse)")
    parser.add_argument("--threads", type=int, default=4, help="spool thread pool size (default 4)")
    parser.add_argument("--dir", help="spool parent directory (default: a temporary directory, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary spool directory")
    parser.add_argument("--profile", action="store_true", help="profile the server (reactor thread) and print the top functions")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.port, args.messages, args.size)
    else:
        server(args)


if __name__ == "__main__":
    main()
