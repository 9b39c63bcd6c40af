"""
gateway.testing.ports: ports for test servers that must know theirs before they start are
picked where the kernel never picks one by itself, only when they can be bound, and never
twice by one picker.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import TestCase

from gateway.testing.ports import FIRST_PORT, PortPicker, claim, ephemeral_start, is_free, ports_for, unused_port


def _in_order(*numbers):
    """A ``pick`` that returns ``numbers`` one after the other."""
    remaining = list(numbers)
    return lambda n: remaining.pop(0)


class PortPickerTests(TestCase):
    def test_below_the_kernels_own_range(self):
        """
        The old helper bound port 0, so its port came from the range the kernel also gives to
        every other port-0 bind and outgoing connection, where a parallel test could take it.
        """
        picker = PortPicker(start=lambda: 30000)
        for _ in range(20):
            self.assertTrue(FIRST_PORT <= picker.port() < 30000)

    def test_below_this_machines_range(self):
        start = ephemeral_start()
        port = unused_port()
        if start - FIRST_PORT >= 100:
            self.assertTrue(FIRST_PORT <= port < start)

    def test_the_port_can_be_bound(self):
        port = unused_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()

    def test_a_taken_port_is_passed_over(self):
        free = unused_port()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            picker = PortPicker(start=lambda: 65536, pick=_in_order(busy - FIRST_PORT, free - FIRST_PORT))
            self.assertEqual(picker.port(), free)

    def test_one_picker_never_gives_a_port_twice(self):
        """A rig picks all its ports before any server binds one: each must differ."""
        same = 12345
        picker = PortPicker(start=lambda: 65536, pick=_in_order(same, same, same + 1))
        self.assertEqual([picker.port(), picker.port()], [FIRST_PORT + same, FIRST_PORT + same + 1])

    def test_a_port_another_picker_handed_out_is_passed_over(self):
        """
        Two pickers (the two workers of ``trial --jobs``) could hand out the same port while its
        first server had not bound it yet, and the second server could bind it first: a cluster
        test's gateway then failed with "Address already in use".
        """
        both = PortPicker()
        same, other = both.port() - FIRST_PORT, both.port() - FIRST_PORT
        both.close()
        first = PortPicker(start=lambda: 65536, pick=_in_order(same))
        self.addCleanup(first.close)
        second = PortPicker(start=lambda: 65536, pick=_in_order(same, other))
        self.addCleanup(second.close)
        self.assertEqual([first.port(), second.port()], [FIRST_PORT + same, FIRST_PORT + other])

    def test_close_ends_the_claims(self):
        port = unused_port()
        picker = PortPicker(start=lambda: 65536, pick=_in_order(port - FIRST_PORT))
        self.assertEqual(picker.port(), port)
        self.assertIsNone(claim(port))
        picker.close()
        held = claim(port)
        self.assertIsNotNone(held)
        held.close()

    def test_ports_for_a_test_stay_claimed_until_its_cleanup(self):
        class Case:
            cleanups: list = []

            def addCleanup(self, f, *args):  # noqa: N802 - trial's name
                self.cleanups.append((f, args))

        case = Case()
        port = ports_for(case).port()
        self.assertIsNone(claim(port))
        for f, args in case.cleanups:
            f(*args)
        held = claim(port)
        self.assertIsNotNone(held)
        held.close()

    def test_unused_port_leaves_no_claim_behind(self):
        """Its test binds the port at once; a claim kept until the process ends would only pile up."""
        held = claim(unused_port())
        self.assertIsNotNone(held)
        held.close()

    def test_no_room_below_the_range_falls_back_to_the_kernel(self):
        """A machine whose ephemeral range starts low: a port-0 pick, still a usable port."""

        def never(n):
            raise AssertionError("nothing to pick from")

        port = PortPicker(start=lambda: FIRST_PORT + 10, pick=never).port()
        self.assertTrue(1 <= port <= 65535)

    def test_is_free_sees_a_listener(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            self.assertFalse(is_free(s.getsockname()[1]))

    def test_the_range_file_is_read_and_a_missing_one_means_the_default(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("40000\t60999\n")
        self.assertEqual(ephemeral_start(path), 40000)
        self.assertEqual(ephemeral_start(path + ".missing"), 32768)
