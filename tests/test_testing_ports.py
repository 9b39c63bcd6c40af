"""
gateway.testing.ports: ports for test servers that must know theirs before they start are
picked where the kernel never picks one by itself, and only when they can be bound.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import TestCase

from gateway.testing.ports import FIRST_PORT, ephemeral_start, is_free, kernel_port, unused_port


class UnusedPortTests(TestCase):
    def test_below_the_kernels_own_range(self):
        """
        The old helper bound port 0, so its port came from the range the kernel also gives to
        every other port-0 bind and outgoing connection, where a parallel test could take it.
        """
        start = ephemeral_start()
        for _ in range(20):
            port = unused_port()
            self.assertGreaterEqual(port, FIRST_PORT)
            self.assertLess(port, start)

    def test_the_port_can_be_bound(self):
        port = unused_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()

    def test_a_taken_port_is_passed_over(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            free = kernel_port()
            # The first pick is the busy port, the second the free one.
            picks = iter([busy - FIRST_PORT, free - FIRST_PORT])
            port = unused_port(start=lambda: 65536, pick=lambda n: next(picks))
        self.assertNotEqual(port, busy)
        self.assertEqual(port, free)

    def test_no_room_below_the_range_falls_back_to_the_kernel(self):
        """A machine whose ephemeral range starts low: a port-0 pick, still a usable port."""

        def never(n):
            raise AssertionError("nothing to pick from")

        port = unused_port(start=lambda: FIRST_PORT + 10, pick=never)
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
