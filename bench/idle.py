"""
What the machine does with an idle CPU, printed with every side-by-side run.

With one connection per message every SMTP step sleeps and wakes, and on a virtual machine a
CPU that halts when idle wakes through the host: on the development VM (``haltpoll`` driver,
``guest_halt_poll_ns=0``) that cost graphsmtp most of its gap to Postfix in the one-connection
cell, and 200 µs of polling closed it (README, "The machine's idle setting").  A run's ratios
are only comparable with another's under the same setting, so the run says which it had.
"""

from __future__ import annotations

import os

CPUIDLE = "/sys/devices/system/cpu/cpuidle"
HALTPOLL = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def idle_note(root: str = "/") -> str:
    """One line: the cpuidle driver and governor, and for ``haltpoll`` how long it polls."""
    cpuidle = os.path.join(root, CPUIDLE.lstrip("/"))
    driver = _read(os.path.join(cpuidle, "current_driver"))
    if not driver or driver == "none":
        return "idle CPUs: no cpuidle driver (the kernel's default idle loop)"
    governor = _read(os.path.join(cpuidle, "current_governor"))
    note = f"idle CPUs: cpuidle driver {driver}" + (f", governor {governor}" if governor else "")
    poll = _read(os.path.join(root, HALTPOLL.lstrip("/"))) if driver == "haltpoll" else None
    if poll == "0":
        note += (", no polling before a halt (guest_halt_poll_ns=0: a virtual CPU halts at once, "
                 "which slows the one-connection cells)")
    elif poll is not None and poll.isdigit():
        note += f", polling up to {int(poll) // 1000} µs before a halt"
    return note
