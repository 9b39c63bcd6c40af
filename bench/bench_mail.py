#!/usr/bin/env python
"""
Benchmark of the one mail grammar (gateway.mail): how long judging a header section of each
expensive shape takes, and the process's peak RSS, at a few sizes.

    python bench/bench_mail.py                 # 64 KiB and 256 KiB
    python bench/bench_mail.py --sizes 16 64 256 1024
    python bench/bench_mail.py --typical        # CPU per judge of typical sections instead

``--typical`` times the sections of bench/typical_headers.py (smtp-source's, a cron message, a
19-field Thunderbird message) in CPU time (best of 7, busy machines inflate wall time) and
counts the Python calls per judge, which does not depend on load.  Issue 13, on the busy
2-core VM: smtp-source 61-97 -> 20-23 us, cron 79-92 -> 37-41 us, Thunderbird 222-271 ->
88-106 us; calls per judge 370 -> 131, 481 -> 212, 1319 -> 387.

The shapes are those of issue 8 (tests/mail_shapes.py): a 250 KB encoded-word From, long
address lists, ``a.a.a…@``, source routes, comment runs and nesting, empty groups, many
fields, long display names and quoted strings.  The old parser (the stdlib structured-header
parser on the reactor thread) took 5–15 s and 4.4 GB for the first of them.

Figures on the 2-core development VM (best of 5, while a mutation run used both cores):

    256 KiB   encoded-words 2 ms, address-list 35 ms, dotted-local 43 ms, source-routes 55 ms,
              comment-run 114 ms (accepted), nested-comments 2 ms, empty-groups 55 ms,
              many-fields 10 ms, long-display-name 57 ms, long-quoted-string 9 ms,
              unclosed quote/comment 4-9 ms; peak RSS of the whole run 24 MB
     64 KiB   0.4-57 ms per shape
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gateway.mail.errors import MailRefusal  # noqa: E402
from gateway.mail.message import parse_header_section  # noqa: E402
from tests.mail_shapes import shapes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="section sizes in KiB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--typical", action="store_true", help="time typical header sections instead")
    args = parser.parse_args()
    if args.typical:
        typical()
        return
    for size in args.sizes:
        for name, section in shapes(size * 1024).items():
            best = float("inf")
            outcome = "accepted"
            for _ in range(args.runs):
                start = time.perf_counter()
                try:
                    parse_header_section(section)
                except MailRefusal as e:
                    outcome = f"{e.code} {e.status} {e.text}"
                best = min(best, time.perf_counter() - start)
            print(f"{size:5d} KiB  {name:20s} {best * 1000:8.1f} ms  {outcome[:70]}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def typical(number: int = 3000) -> None:
    """CPU microseconds and Python calls per judge of each typical section."""
    import cProfile
    import functools
    import pstats
    import timeit

    from bench.typical_headers import SECTIONS

    for name, section in SECTIONS.items():
        fields = len(parse_header_section(section).fields)
        best = min(timeit.repeat(functools.partial(parse_header_section, section), number=number, repeat=7, timer=time.process_time))
        profile = cProfile.Profile()
        profile.runcall(parse_header_section, section)
        calls = pstats.Stats(profile).total_calls - 1  # type: ignore[attr-defined]
        print(f"{name:12s} {fields:3d} fields  {best / number * 1e6:7.1f} us CPU  {calls:5d} calls per judge")


if __name__ == "__main__":
    main()
