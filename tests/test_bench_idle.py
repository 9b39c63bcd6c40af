"""
``bench/idle.py``: the line every side-by-side run prints about the machine's idle CPUs, which
decides much of the one-connection cell on a virtual machine (README, "The machine's idle
setting").  Read from a fake ``/sys``, so each case is the one named.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from tests.bench_modules import load_bench

idle = load_bench("idle")


class IdleNoteTests(TestCase):
    def fake_sys(self, driver: str | None, governor: str | None = None, poll_ns: str | None = None) -> str:
        root = self.mktemp()
        cpuidle = os.path.join(root, idle.CPUIDLE.lstrip("/"))
        os.makedirs(cpuidle)
        for name, value in (("current_driver", driver), ("current_governor", governor)):
            if value is not None:
                with open(os.path.join(cpuidle, name), "w") as f:
                    f.write(value + "\n")
        if poll_ns is not None:
            os.makedirs(os.path.dirname(os.path.join(root, idle.HALTPOLL.lstrip("/"))))
            with open(os.path.join(root, idle.HALTPOLL.lstrip("/")), "w") as f:
                f.write(poll_ns + "\n")
        return root

    def test_haltpoll_without_polling_says_a_cpu_halts_at_once(self) -> None:
        note = idle.idle_note(self.fake_sys("haltpoll", "haltpoll", "0"))
        self.assertEqual(note, "idle CPUs: cpuidle driver haltpoll, governor haltpoll, no polling before a halt "
                               "(guest_halt_poll_ns=0: a virtual CPU halts at once, which slows the "
                               "one-connection cells)")

    def test_haltpoll_with_polling_says_how_long(self) -> None:
        note = idle.idle_note(self.fake_sys("haltpoll", "haltpoll", "200000"))
        self.assertEqual(note, "idle CPUs: cpuidle driver haltpoll, governor haltpoll, polling up to 200 µs before a halt")

    def test_another_driver_is_named_with_its_governor(self) -> None:
        self.assertEqual(idle.idle_note(self.fake_sys("intel_idle", "menu")),
                         "idle CPUs: cpuidle driver intel_idle, governor menu")

    def test_no_cpuidle_at_all(self) -> None:
        self.assertEqual(idle.idle_note(self.mktemp()), "idle CPUs: no cpuidle driver (the kernel's default idle loop)")
        self.assertEqual(idle.idle_note(self.fake_sys("none")),
                         "idle CPUs: no cpuidle driver (the kernel's default idle loop)")
