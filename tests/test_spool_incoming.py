"""
The spool's incoming/ scan (sendmail drop-offs imported into the queue).

Importing a sendmail drop-off hits a transient OS error (too many open files, EIO,
a permission problem the admin can fix).  The message was acknowledged (sendmail exited 0),
so the entry must stay in incoming/ to be retried at the next scan — not be moved to
quarantine/, where nothing ever delivers it.
"""

from __future__ import annotations

import errno
import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import sendmail
from gateway.spool import disk as disk_module
from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.fileops import FileOps
from tests.sendmail_helpers import daemon_spool


class _NoMoreFiles(FileOps):
    def read_file(self, path: str) -> bytes:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class TransientImportErrorTests(SynchronousTestCase):
    def setUp(self):
        self.spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            status = sendmail.main(["--spool", self.spool_dir, "a@example.com"],
                                   stdin=io.BytesIO(b"Subject: s\n\nbody\n"), environ={})
        finally:
            sys.stderr = stderr
        self.assertEqual(status, 0)

    def test_transient_read_error_keeps_the_entry_for_the_next_scan(self):
        scan = SpoolDisk(self.spool_dir, _NoMoreFiles()).scan_incoming()
        self.assertEqual(scan.quarantined, [])
        self.assertEqual(len(scan.errors), 1)
        self.assertEqual(os.listdir(os.path.join(self.spool_dir, "quarantine")), [])
        scan = SpoolDisk(self.spool_dir).scan_incoming()
        [entry] = scan.entries
        self.assertEqual(entry.envelope.recipients, ("a@example.com",))
        self.assertTrue(os.path.exists(entry.message_path))


# a directory listing is not a snapshot.  POSIX leaves it unspecified whether readdir
# returns a file renamed into the directory while the listing runs, so the spool can see a
# record whose message was renamed in just before it (both renames happened during the listing,
# the message was missed, the record seen).  Such an entry is complete and acknowledged; the
# spool must not quarantine its record (after which the lone message would be deleted).
_REAL_SCANDIR = os.scandir


class _HidingDirEntries:
    """os.scandir that leaves ``hidden`` names out of listings of ``directory``."""

    def __init__(self, directory: str, hidden: set) -> None:
        self.directory = directory
        self.hidden = hidden
        self.real = os.scandir

    def __call__(self, path="."):
        it = self.real(path)
        if os.path.abspath(path) != self.directory:
            return it
        entries = [e for e in it if e.name not in self.hidden]
        it.close()
        return _Listing(entries)


class _Listing(list):
    def __enter__(self):
        return iter(self)

    def __exit__(self, *exc):
        return False


class ListingRaceTests(SynchronousTestCase):
    def setUp(self):
        self.spool_dir = daemon_spool(self, os.path.abspath(self.mktemp()))

    def hide(self, directory: str, *names: str) -> None:
        self.patch(disk_module.os, "scandir", _HidingDirEntries(directory, set(names)))

    def sendmail_dropoff(self) -> str:
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            status = sendmail.main(["--spool", self.spool_dir, "a@example.com"],
                                   stdin=io.BytesIO(b"Subject: s\n\nbody\n"), environ={})
        finally:
            sys.stderr = stderr
        self.assertEqual(status, 0)
        [queue_id] = os.listdir(os.path.join(self.spool_dir, "incoming"))[:1]
        return queue_id.partition(".")[0]

    def test_incoming_scan_does_not_quarantine_record_whose_message_it_missed(self):
        queue_id = self.sendmail_dropoff()
        disk = SpoolDisk(self.spool_dir)
        self.hide(disk.layout.incoming, queue_id + ".msg")
        scan = disk.scan_incoming()
        self.assertEqual(scan.quarantined, [])
        self.assertEqual(os.listdir(disk.layout.quarantine), [])
        # Imported now (or left for the next scan): either way a complete entry survives.
        self.patch(disk_module.os, "scandir", _REAL_SCANDIR)
        disk.scan_incoming()
        self.assertEqual(disk.load(queue_id).envelope.recipients, ("a@example.com",))

    def test_recovery_does_not_quarantine_record_whose_message_it_missed(self):
        disk = SpoolDisk(self.spool_dir)
        self.addCleanup(disk.release_lock)
        disk.ensure_directories()
        temp = disk.create_temp("0000000000000000001")
        disk.append(temp, [b"Subject: s\r\n\r\nbody\r\n"])
        entry = SpoolEntry(queue_id="0000000000000000001", envelope=Envelope("s@example.com", ("r@example.com",)),
                           provenance=Provenance(client_address="192.0.2.1", client_name="c", listener="l"),
                           received_at=1.0, message_path="", size=0)
        disk.publish(temp, entry)
        self.hide(disk.layout.queue, "0000000000000000001.msg")
        report = disk.recover()
        self.assertEqual(report.quarantined, [])
        self.assertEqual([queue_id for _, queue_id in report.schedule], ["0000000000000000001"])
        self.assertEqual(disk.load("0000000000000000001").envelope.sender, "s@example.com")

    def test_incoming_scan_keeps_old_message_whose_record_it_missed(self):
        # sendmail's message file keeps the mtime of its last write, which can be long before
        # the renames (stdin held open); a listing that misses the record must not make the
        # acknowledged message look like an abandoned half.
        queue_id = self.sendmail_dropoff()
        disk = SpoolDisk(self.spool_dir)
        msg = os.path.join(disk.layout.incoming, queue_id + ".msg")
        os.utime(msg, (1.0, 1.0))
        self.hide(disk.layout.incoming, queue_id + ".env")
        disk.scan_incoming()
        self.patch(disk_module.os, "scandir", _REAL_SCANDIR)
        disk.scan_incoming()
        self.assertEqual(disk.load(queue_id).envelope.recipients, ("a@example.com",))
