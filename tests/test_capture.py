"""
CaptureDeliverer writes one Maildir file per message with the envelope in prepended headers;
ThreadPoolService starts and stops its pool.  The capture tests run with a real thread pool
(the deliverer's own), as it will in the daemon.
"""

from __future__ import annotations

import email
import errno
import os
import stat

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from gateway.delivery.capture import CaptureDeliverer
from gateway.delivery.interfaces import Delivered, IDeliverer, Transient
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.testing.spool import FailingFileOps
from gateway.testing.threads import ImmediateReactor, SynchronousThreadPool
from gateway.threads import ThreadPoolService

MESSAGE = b"Subject: report\r\nTo: a@example.com\r\n\r\nline one\r\n\xe9t\xe9 8-bit\r\n"


def make_entry(path: str, data: bytes = MESSAGE, sender="app@example.com",
               recipients=("a@example.com", "hidden-bcc@example.com")) -> SpoolEntry:
    with open(path, "wb") as f:
        f.write(data)
    return SpoolEntry("0SJ5Q4ZP1A2B3C4D5E6", Envelope(sender, tuple(recipients)),
                      Provenance("192.0.2.1", "c.example", "default"), 1.0, path, len(data))


class CaptureOutputTests(TestCase):
    def setUp(self):
        self.pool_service = ThreadPoolService("test-capture", 1, 2)
        self.pool_service.startService()
        self.addCleanup(self.pool_service.stopService)
        self.outbox = os.path.abspath(self.mktemp())
        self.deliverer = CaptureDeliverer(self.outbox, self.pool_service.pool, reactor)

    def new_files(self):
        return sorted(os.listdir(os.path.join(self.outbox, "new")))

    @inlineCallbacks
    def test_one_maildir_file_with_envelope_headers(self):
        verifyObject(IDeliverer, self.deliverer)
        entry = make_entry(self.mktemp())
        outcome = yield self.deliverer.deliver(entry)
        self.assertIsInstance(outcome, Delivered)
        [name] = self.new_files()
        self.assertIn(entry.queue_id, name)
        self.assertEqual(os.listdir(os.path.join(self.outbox, "tmp")), [])
        path = os.path.join(self.outbox, "new", name)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(data, (
            b"X-Graphsmtp-Queue-Id: 0SJ5Q4ZP1A2B3C4D5E6\r\n"
            b"X-Graphsmtp-Envelope-From: <app@example.com>\r\n"
            b"X-Graphsmtp-Envelope-To: <a@example.com>\r\n"
            b"X-Graphsmtp-Envelope-To: <hidden-bcc@example.com>\r\n") + MESSAGE)
        parsed = email.message_from_bytes(data)
        self.assertEqual(parsed.get_all("X-Graphsmtp-Envelope-To"), ["<a@example.com>", "<hidden-bcc@example.com>"])
        self.assertEqual(parsed["Subject"], "report")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertIn(path, outcome.detail)

    @inlineCallbacks
    def test_null_sender_and_large_message_streamed(self):
        body = b"Subject: big\r\n\r\n" + (b"0123456789" * 100 + b"\r\n") * 5000  # ~5 MB
        entry = make_entry(self.mktemp(), body, sender="")
        yield self.deliverer.deliver(entry)
        [name] = self.new_files()
        with open(os.path.join(self.outbox, "new", name), "rb") as f:
            data = f.read()
        self.assertIn(b"X-Graphsmtp-Envelope-From: <>\r\n", data)
        self.assertTrue(data.endswith(body))

    @inlineCallbacks
    def test_each_delivery_is_a_new_file(self):
        entry = make_entry(self.mktemp())
        yield self.deliverer.deliver(entry)
        yield self.deliverer.deliver(entry)
        self.assertEqual(len(self.new_files()), 2)


class CaptureFailureTests(SynchronousTestCase):
    def test_disk_trouble_is_transient_and_leaves_nothing(self):
        outbox = os.path.abspath(self.mktemp())
        deliverer = CaptureDeliverer(outbox, SynchronousThreadPool(), ImmediateReactor(),
                                     fileops=FailingFileOps("sync_file", errno.ENOSPC))
        outcome = self.successResultOf(deliverer.deliver(make_entry(self.mktemp())))
        self.assertIsInstance(outcome, Transient)
        self.assertIn("No space left", outcome.reason)
        self.assertEqual(os.listdir(os.path.join(outbox, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(outbox, "new")), [])

    def test_missing_message_file_is_transient(self):
        deliverer = CaptureDeliverer(self.mktemp(), SynchronousThreadPool(), ImmediateReactor())
        entry = make_entry(self.mktemp())
        os.unlink(entry.message_path)
        self.assertIsInstance(self.successResultOf(deliverer.deliver(entry)), Transient)


class ThreadPoolServiceTests(SynchronousTestCase):
    def test_pool_starts_and_stops_with_service(self):
        service = ThreadPoolService("graphsmtp-test", 0, 3)
        self.assertEqual(service.pool.name, "graphsmtp-test")
        self.assertEqual(service.pool.max, 3)
        self.assertFalse(service.pool.started)
        service.startService()
        self.assertTrue(service.pool.started)
        service.stopService()
        self.assertTrue(service.pool.joined)
        self.assertFalse(service.running)


class OutboxPermissionTests(SynchronousTestCase):
    def test_new_outbox_is_private(self):
        import stat

        from gateway.testing.spool import ImmediateReactor, SynchronousThreadPool

        outbox = os.path.join(os.path.abspath(self.mktemp()), "outbox")
        spool_file = os.path.abspath(self.mktemp())
        with open(spool_file, "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
        entry = SpoolEntry("Q1", Envelope("a@example.com", ("b@example.com",)),
                           Provenance("127.0.0.1", "c", "default"), 0.0, spool_file, 21)
        deliverer = CaptureDeliverer(outbox, SynchronousThreadPool(), ImmediateReactor())
        self.successResultOf(deliverer.deliver(entry))
        self.assertEqual(stat.S_IMODE(os.stat(outbox).st_mode) & 0o077, 0)
