"""
The spool, runner and capture deliverer together on the real reactor with a real thread pool:
concurrent commits (one of them a multi-megabyte message streamed in chunks) end up in the
capture outbox exactly once each, and a restart finds nothing left behind.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from gateway.config.model import QueueConfig
from gateway.delivery.capture import CaptureDeliverer
from gateway.delivery.interfaces import IDeliveryObserver
from gateway.queue.runner import QueueRunner
from gateway.spool.entry import Envelope, Provenance
from gateway.spool.store import DirectorySpool
from gateway.threads import ThreadPoolService

PROVENANCE = Provenance("192.0.2.1", "client.example", "default")


@implementer(IDeliveryObserver)
class CountingObserver:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.delivered_ids: list[str] = []
        self.done: Deferred = Deferred()

    def delivered(self, entry, outcome):
        self.delivered_ids.append(entry.queue_id)
        if len(self.delivered_ids) == self.expected and not self.done.called:
            self.done.callback(None)

    def deferred(self, entry, outcome):
        pass

    def failed(self, entry, outcome):
        pass


class RealThreadsTests(TestCase):
    @inlineCallbacks
    def test_concurrent_commits_delivered_once(self):
        base = os.path.abspath(self.mktemp())
        pool = ThreadPoolService("test-spool", 1, 4)
        pool.startService()
        self.addCleanup(pool.stopService)
        spool = DirectorySpool(os.path.join(base, "spool"), pool.pool, reactor, chunk_size=256 * 1024)
        self.addCleanup(spool.close)
        outbox = os.path.join(base, "outbox")
        observer = CountingObserver(21)
        runner = QueueRunner(spool, CaptureDeliverer(outbox, pool.pool, reactor), QueueConfig(concurrency=4),
                             reactor, observers=[observer])
        runner.startService()
        yield runner.ready

        big = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 3000  # 3 MB in 64 KiB writes

        @inlineCallbacks
        def send(n: int, data: bytes):
            writer = yield spool.open_writer()
            for i in range(0, len(data), 65536):
                writer.write(data[i:i + 65536])
            entry = yield writer.commit(Envelope("s@example.com", (f"r{n}@example.com",)), PROVENANCE)
            return entry

        small = [send(n, b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n)) for n in range(20)]
        entries = yield gatherResults(small + [send(20, big)])
        yield observer.done
        yield runner.stopService()

        self.assertEqual(sorted(observer.delivered_ids), sorted(e.queue_id for e in entries))
        files = os.listdir(os.path.join(outbox, "new"))
        self.assertEqual(len(files), 21)
        big_entry = entries[-1]
        [big_file] = [f for f in files if big_entry.queue_id in f]
        with open(os.path.join(outbox, "new", big_file), "rb") as f:
            self.assertTrue(f.read().endswith(big))
        self.assertEqual(os.listdir(os.path.join(base, "spool", "queue")), [])
        self.assertEqual(os.listdir(os.path.join(base, "spool", "tmp")), [])
