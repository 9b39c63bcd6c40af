"""
The floors ``bench/compare_postfix.py`` sets graphsmtp against (``bench/plain_twisted.py``).

A floor that answered 250 without storing the message whole would make every ratio against it
a lie, and the benchmark only counts the files.  These tests hold the lean floor to the bytes:
the message as sent (dots undone), each one committed before its 250, pipelined input in order.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gateway.spool.journal import DATA_START
from tests.bench_modules import load_bench

floor = load_bench("plain_twisted")


class LeanSMTPTests(TestCase):
    def setUp(self) -> None:
        self.bodies: list[bytes] = []
        self.pending: list[Deferred] = []
        self.transport = StringTransport()

    def connect(self, commit=None):
        protocol = floor.LeanSMTP(commit or self.commit_now)
        protocol.makeConnection(self.transport)
        return protocol

    def commit_now(self, body: bytes) -> Deferred:
        self.bodies.append(body)
        return succeed(None)

    def commit_later(self, body: bytes) -> Deferred:
        self.bodies.append(body)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def test_message_whole_with_dots_undone(self) -> None:
        """The stored bytes are the message as the client meant it, the end split across reads."""
        protocol = self.connect()
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        protocol.dataReceived(b"..first line\r\nmiddle\r\n..\r\nlast\r")
        self.assertEqual(self.bodies, [])
        protocol.dataReceived(b"\n.")
        self.assertEqual(self.bodies, [])
        protocol.dataReceived(b"\r\nQUIT\r\n")
        self.assertEqual(self.bodies, [b".first line\r\nmiddle\r\n.\r\nlast\r\n"])
        self.assertEqual(self.transport.value(),
                         b"220 lean ESMTP\r\n250-lean\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n"
                         b"250 2.0.0 queued\r\n221 bye\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_no_250_before_the_commit(self) -> None:
        """The 250 waits for the durable write, and pipelined commands wait behind it."""
        protocol = self.connect(self.commit_later)
        protocol.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        self.transport.clear()
        protocol.dataReceived(b"one\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\ntwo\r\n.\r\n")
        self.assertEqual((self.bodies, self.transport.value()), ([b"one\r\n"], b""))
        self.pending.pop(0).callback(None)
        self.assertEqual(self.bodies, [b"one\r\n", b"two\r\n"])
        self.assertEqual(self.transport.value(), b"250 2.0.0 queued\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n")
        self.pending.pop(0).callback(None)
        self.assertTrue(self.transport.value().endswith(b"354 go ahead\r\n250 2.0.0 queued\r\n"))

    def test_empty_message(self) -> None:
        protocol = self.connect()
        protocol.dataReceived(b"DATA\r\n.\r\n")
        self.assertEqual(self.bodies, [b""])

    def test_large_message_in_small_reads(self) -> None:
        """A 1 MB message in 1,448-byte reads (loopback's segments) arrives whole."""
        lines = b"".join(b"%07d" % n + b"X" * 70 + b"\r\n" for n in range(13_000))
        protocol = self.connect()
        stream = b"DATA\r\n" + lines + b".\r\n"
        for at in range(0, len(stream), 1448):
            protocol.dataReceived(stream[at:at + 1448])
        self.assertEqual(self.bodies, [lines])

    def test_nothing_after_quit(self) -> None:
        """A message pipelined behind QUIT is neither stored nor answered."""
        protocol = self.connect(self.commit_later)
        protocol.dataReceived(b"DATA\r\none\r\n.\r\nQUIT\r\nMAIL FROM:<a@b>\r\nDATA\r\ntwo\r\n.\r\n")
        self.pending.pop(0).callback(None)
        self.assertEqual(self.bodies, [b"one\r\n"])
        self.assertTrue(self.transport.value().endswith(b"250 2.0.0 queued\r\n221 bye\r\n"))
        self.assertEqual(self.pending, [])

    def test_failed_commit_is_no_250(self) -> None:
        protocol = self.connect(self.commit_later)
        protocol.dataReceived(b"DATA\r\none\r\n.\r\nNOOP\r\n")
        self.transport.clear()
        self.pending.pop(0).errback(OSError("disk full"))
        self.assertEqual(self.transport.value(), b"451 4.3.0 not stored\r\n250 ok\r\n")


def _one_message_answered(factory) -> Deferred:
    """Send one message through a session of ``factory``; fires with the reply to its end."""
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    answered: Deferred = Deferred()

    def write(data: bytes, write=transport.write) -> None:
        write(data)
        if not answered.called and not data.startswith((b"220", b"354")):
            answered.callback(data)

    transport.write = write
    protocol.dataReceived(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    return answered


def _held(spool: str, suffix: str = "") -> list[bytes]:
    """The contents of the files in ``spool``/held whose names end with ``suffix``, by name."""
    held = os.path.join(spool, "held")
    contents = []
    for name in sorted(os.listdir(held)):
        if name.endswith(suffix):
            with open(os.path.join(held, name), "rb") as f:
                contents.append(f.read())
    return contents


class LeanFactoryTests(TestCase):

    def test_a_session_stores_into_held(self) -> None:
        """The factory the benchmark runs: the 250 comes after the file is in held/."""
        spool = self.mktemp()
        files = floor.DurableFiles(spool)
        d = _one_message_answered(floor.LeanFactory(lambda body: deferToThread(files.commit, body)))
        d.addCallback(lambda reply: self.assertEqual(
            (reply, len(os.listdir(os.path.join(spool, "held"))), _held(spool, ".msg")),
            (b"250 2.0.0 queued\r\n", 1, [b"Subject: x\r\n\r\nbody\r\n"])))
        return d

    def test_into_graphsmtps_spool(self) -> None:
        """``--gateway-spool``: a message and its record in held/, counted once by the benchmark."""
        from gateway.threads import ThreadPoolService

        pool = ThreadPoolService("test-spool", 1, 2)
        pool.startService()
        self.addCleanup(pool.stopService)
        commit = floor.GatewaySpoolCommit(self.mktemp(), pool)
        self.addCleanup(commit.spool.close)
        spool = commit.spool.directory
        self.assertEqual(_held(spool, ""), [])  # there, and empty, before the first message
        d = _one_message_answered(floor.LeanFactory(commit))

        def check(reply: bytes) -> None:
            self.assertEqual(reply, b"250 2.0.0 queued\r\n")
            self.assertEqual(_held(spool, ".msg"), [b"Subject: x\r\n\r\nbody\r\n"])
            self.assertEqual(len(_held(spool, ".env")), 1)
        return d.addCallback(check)

    def test_into_graphsmtps_spool_through_the_commit_child(self) -> None:
        """
        ``--gateway-spool`` as compare_postfix runs it: the daemon's commit child and its intake
        journal made the message durable (the spool's threads did not), so the floor "lean
        Twisted + spool" measures the daemon's spool.
        """
        from gateway.threads import ThreadPoolService

        pool = ThreadPoolService("test-spool", 1, 2)
        pool.startService()
        self.addCleanup(pool.stopService)
        commit = floor.GatewaySpoolCommit(self.mktemp(), pool, in_commit_child=True)
        self.addCleanup(commit.spool.close)
        assert commit.commits is not None
        commit.commits.startService()
        self.addCleanup(commit.commits.stopService)
        spool = commit.spool.directory
        d = _one_message_answered(floor.LeanFactory(commit))

        def check(reply: bytes) -> None:
            self.assertEqual(reply, b"250 2.0.0 queued\r\n")
            self.assertEqual(_held(spool, ".msg"), [b"Subject: x\r\n\r\nbody\r\n"])
            self.assertEqual(commit.commits.started, 1)
            journal = commit.commits.journal
            assert journal is not None
            with open(journal, "rb") as f:
                f.seek(DATA_START)
                frame = f.read(4096)
            self.assertNotEqual(frame, bytes(len(frame)))  # the batch was appended to it: the child committed it
        return d.addCallback(check)


class DurableFilesTests(TestCase):
    def test_commit_leaves_the_message_in_held(self) -> None:
        """What the benchmark counts: one file per message in held/, with the message's bytes."""
        spool = self.mktemp()
        files = floor.DurableFiles(spool)
        files.commit(b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(_held(spool), [b"Subject: x\r\n\r\nbody\r\n"])
        self.assertEqual(os.listdir(os.path.join(spool, "tmp")), [])


class FloorCountTests(TestCase):
    def test_messages_counted_not_files(self) -> None:
        """compare_postfix's check that every acknowledged message is stored: an entry (message, record) counts once."""
        compare = load_bench("compare_postfix")
        server = compare.PlainTwistedServer(self.mktemp(), 0, "python", 1, True, True)
        self.assertEqual(server.name, "lean Twisted + spool")
        os.makedirs(server.held)
        for name in ("1K.msg", "1K.env", "2K.msg", "2K.env", "123-0.msg"):
            open(os.path.join(server.held, name), "w").close()
        self.assertEqual(server.queued(), 3)


class SideBySideTableTests(TestCase):
    def test_the_table_counts_the_reps_at_or_above_postfix(self) -> None:
        """
        compare_postfix's verdict per cell rests on the reps' pairs as well as on the ratio of the
        two medians (which can come from different reps): 1.01× by medians here, yet one rep of
        three at 1.0 or more.
        """
        compare = load_bench("compare_postfix")
        samples = compare.Samples()
        cell = compare.CELLS[0]
        for postfix, graphsmtp in ((100.0, 99.0), (101.0, 150.0), (300.0, 102.0)):
            samples.add("Postfix", cell.name, compare.Result(postfix, 1.0))
            samples.add("graphsmtp", cell.name, compare.Result(graphsmtp, 1.0))
        row = compare.table(samples, [cell]).splitlines()[2]
        self.assertIn("| **1.01** |", row)  # 102 / 101: the medians
        self.assertIn("| 0.99 1.49 0.34 |", row)
        self.assertIn("| 1 of 3 |", row)


class RunOrderTests(TestCase):
    def test_each_server_starts_a_turn_and_follows_another_server_later(self) -> None:
        """
        compare_postfix rotates the servers' order from one cell's runs to the next, and runs every
        other round of rotations backwards: none always runs first or last, nor always right after
        the same server (a fixed order gave one position's drift to one server every rep).
        """
        compare = load_bench("compare_postfix")
        servers = ["Postfix", "graphsmtp", "graphsmtp w2"]
        orders = [compare.run_order(servers, turn) for turn in range(6)]
        self.assertEqual(orders[:3], [servers, ["graphsmtp", "graphsmtp w2", "Postfix"],
                                      ["graphsmtp w2", "Postfix", "graphsmtp"]])
        self.assertEqual(orders[3:], [list(reversed(order)) for order in orders[:3]])
        for order in orders:
            self.assertEqual(sorted(order), sorted(servers))
        before_graphsmtp = {order[order.index("graphsmtp") - 1] for order in orders if order[0] != "graphsmtp"}
        self.assertEqual(before_graphsmtp, {"Postfix", "graphsmtp w2"})
        self.assertEqual(servers, ["Postfix", "graphsmtp", "graphsmtp w2"])  # the caller's list is left alone
