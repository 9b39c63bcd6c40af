"""
Several gateways, one tenant: deliveries per second through 1 and 3 ``twistd graphsmtp`` nodes
sharing one Redis (``[cluster]``) behind a real HAProxy, and the largest per-mailbox
concurrency and per-window rate the fake Graph observed.

    .venv/bin/python bench/bench_cluster.py [--messages 1500] [--mailboxes 3] [--nodes 1,3]
                                            [--rate 30] [--window 2] [--concurrency 4] [--latency 0.05]

The limits are Exchange's (30 messages a minute, 4 requests in flight per mailbox) with the
minute scaled down to ``--window`` seconds (``cluster.rate_window``) so the full 1,500-message
run takes about a minute rather than 17.  With the limits holding, the cluster's throughput
is bounded by ``mailboxes * rate / window`` messages per second whatever the node count: more
nodes add intake capacity and availability, not Graph quota.  Needs redis-server and haproxy
(scripts/debian-packages.txt).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import ensureDeferred, maybeDeferred  # noqa: E402


class _Case:
    """What L{tests.cluster_rig.ClusterRig} needs of a test case: cleanups and fail()."""

    def __init__(self) -> None:
        self.cleanups: list = []

    def addCleanup(self, f, *args) -> None:
        self.cleanups.append((f, args))

    def fail(self, message: str) -> None:
        raise SystemExit(message)

    async def cleanup(self) -> None:
        while self.cleanups:
            f, args = self.cleanups.pop()
            try:
                await maybeDeferred(f, *args)
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                print(f"cleanup: {e}", file=sys.stderr)


async def run(nodes: int, args: argparse.Namespace) -> dict:
    from tests.cluster_rig import ClusterRig

    case = _Case()
    try:
        rig = ClusterRig(case, nodes=nodes, concurrency=args.concurrency, rate=args.rate, window=args.window,
                         latency=args.latency)
        await rig.start()
        mailboxes = rig.mailboxes(args.mailboxes)
        started = time.monotonic()
        accepted, refused = await rig.send(0, args.messages, connections=6, mailboxes=mailboxes)
        accepted_after = time.monotonic() - started
        await rig.delivered_all(accepted, timeout=args.messages * args.window / args.rate + 300)
        elapsed = time.monotonic() - started
        duplicates = sum(1 for by in rig.delivered.values() if len(by) > 1)
        return {
            "nodes": nodes, "accepted": len(accepted), "refused": len(refused), "duplicates": duplicates,
            "intake_s": accepted_after, "elapsed_s": elapsed, "per_s": len(accepted) / elapsed,
            "in_flight": {m: rig.max_in_flight(m) for m in mailboxes},
            "window": {m: rig.busiest_window(m) for m in mailboxes},
        }
    finally:
        await case.cleanup()


async def main(reactor, argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--mailboxes", type=int, default=3)
    parser.add_argument("--nodes", default="1,3")
    parser.add_argument("--rate", type=int, default=30, help="messages per window per mailbox (graph.mailbox_rate)")
    parser.add_argument("--window", type=float, default=2.0, help="cluster.rate_window in seconds (Exchange: 60)")
    parser.add_argument("--concurrency", type=int, default=4, help="graph.mailbox_concurrency")
    parser.add_argument("--latency", type=float, default=0.05, help="the fake Graph's answer delay (s)")
    args = parser.parse_args(argv)
    print(f"{args.messages} messages, {args.mailboxes} mailboxes, limits per mailbox: {args.concurrency} in flight, "
          f"{args.rate} per {args.window:g}s window (bound: {args.mailboxes * args.rate / args.window:.1f}/s; "
          f"the gateways count over the window + a 0.25-1 s margin)")
    for nodes in [int(n) for n in args.nodes.split(",")]:
        r = await run(nodes, args)
        print(f"{r['nodes']} node(s): {r['accepted']} accepted in {r['intake_s']:.1f}s ({r['refused']} refused), "
              f"all delivered in {r['elapsed_s']:.1f}s = {r['per_s']:.1f} deliveries/s, {r['duplicates']} duplicates; "
              f"largest per-mailbox in flight {max(r['in_flight'].values())} (limit {args.concurrency}), "
              f"largest per-mailbox {args.window:g}s window {max(r['window'].values())} (limit {args.rate})")


if __name__ == "__main__":
    task.react(lambda reactor: ensureDeferred(main(reactor, sys.argv[1:])))
