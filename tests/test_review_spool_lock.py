"""
Review: a second gateway pointed at a spool another graphsmtp process owns.  Its queue runner
refuses to start (the spool lock is taken), so whatever its SMTP listeners accepted would be
acknowledged with 250 and then sit in the queue undelivered until the *other* process
restarts.  Intake must refuse (a transient SpoolError, so 451) instead of committing.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance
from gateway.spool.interfaces import SpoolError
from gateway.spool.testing import make_test_spool


class IntakeNeedsTheSpoolLockTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.owner = SpoolDisk(self.directory)  # the other daemon (flock is per open file)
        self.owner.ensure_directories()
        self.owner.acquire_lock()
        self.addCleanup(self.owner.release_lock)

    def test_commit_refused_while_another_process_owns_the_spool(self):
        spool = make_test_spool(self.directory)
        spool.disk.lock_wait = 0
        self.addCleanup(spool.close)
        d = spool.open_writer()

        def commit(writer):
            writer.write(b"Subject: s\r\n\r\nbody\r\n")
            return writer.commit(Envelope("s@example.com", ("r@example.com",)),
                                 Provenance(client_address="192.0.2.1", client_name="c", listener="l"))
        d.addCallback(commit)
        failure = self.failureResultOf(d, SpoolError)
        self.assertIn("in use by another graphsmtp process", str(failure.value))
        self.assertEqual(os.listdir(os.path.join(self.directory, "queue")), [])

    def test_intake_works_once_the_lock_is_free(self):
        self.owner.release_lock()
        spool = make_test_spool(self.directory)
        self.addCleanup(spool.close)
        writer = self.successResultOf(spool.open_writer())
        writer.write(b"Subject: s\r\n\r\nbody\r\n")
        entry = self.successResultOf(writer.commit(
            Envelope("s@example.com", ("r@example.com",)),
            Provenance(client_address="192.0.2.1", client_name="c", listener="l")))
        self.assertTrue(os.path.exists(entry.message_path))
        # The same process's recovery still gets the lock it already holds.
        self.assertEqual([q for _, q in self.successResultOf(spool.recover_schedule())], [entry.queue_id])
