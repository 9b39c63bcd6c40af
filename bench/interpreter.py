"""
Which Python runs the daemon in a benchmark, and how fast it is at the kind of work the
session code does: printed with every side-by-side run, because the build of the interpreter
moves graphsmtp's figures as much as a good change to its code does.

graphsmtp is Python and Postfix is C, so the interpreter's own speed is part of what the
comparison measures.  On the development VM, ``python3`` is a pyenv build (``--enable-shared``,
no profile-guided or link-time optimisation); Debian's ``/usr/bin/python3.11`` is the one a
Debian deployment runs (``python3 -m venv /opt/graphsmtp``, etc/systemd).  The daemon of the
same commit, on the two in turn (10 KB messages, interleaved runs, 2026-12-01): 7-10 % more
messages a second and 7-14 % less CPU per message on Debian's, with one connection and with
ten.  The note lets a reader see which one a run used.
"""

from __future__ import annotations

import subprocess

# Run in the measured interpreter: its version, the installation it comes from (a venv's base:
# ``/usr`` for Debian's), and the best of seven timings of a loop that makes a small object, a
# dict and a few calls per round (what the session code does most).
_PROBE = r"""
import sys, time
class Box:
    __slots__ = ("value",)
    def __init__(self, value):
        self.value = value
    def plus(self, other):
        return self.value + other
def step(i):
    return Box(i).plus(len({"n": i}))
def loop(rounds):
    total = 0
    for i in range(rounds):
        total += step(i)
    return total
rounds = 100_000
best = min((lambda start: (loop(rounds), time.perf_counter() - start)[1])(time.perf_counter()) for _ in range(7))
print(sys.version.split()[0], sys.base_prefix, f"{best / rounds * 1e9:.0f}", sep="\n")
"""


def interpreter_note(python: str) -> str:
    """
    One line: ``python``'s version and base installation, and nanoseconds per round of
    L{_PROBE}'s loop.  The version and base name the build; the time moves with the machine's
    speed as well (two runs of Debian's, minutes apart: 188 and 172 ns).
    """
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"interpreter {python}: could not be run ({e})"
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != 3:
        return f"interpreter {python}: could not be measured ({done.stderr.strip()[-200:]})"
    version, base, nanoseconds = lines
    return (f"interpreter {python}: Python {version} from {base}, {nanoseconds} ns per round of a loop of small "
            "calls (lower is faster; it moves with the machine's speed too)")


__all__ = ["interpreter_note"]
