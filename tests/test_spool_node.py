"""
Issue 14, unique ids across the cluster: the spool record keeps the gateway that accepted each
message, stamped at intake and at a sendmail import, and the queue tool shows it.
"""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import queue as queue_cli
from gateway.cli import sendmail
from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.record import decode_record, encode_record
from gateway.testing.spool import make_test_spool
from tests.sendmail_helpers import daemon_spool

ENVELOPE = Envelope("app@corp.example", ("alice@corp.example",))
PROVENANCE = Provenance("192.0.2.7", "printer.example", "smtp")
MESSAGE = b"From: app@corp.example\r\nTo: alice@corp.example\r\nSubject: s\r\n\r\nbody\r\n"


class NodeInRecordTests(SynchronousTestCase):
    def test_round_trip_and_older_records(self) -> None:
        entry = SpoolEntry(queue_id="0SJ5Q4ZP1A2B3C4D5E6", envelope=ENVELOPE,
                           provenance=Provenance("192.0.2.7", "h", "smtp", node="gw-b"),
                           received_at=1.0, message_path="/m", size=3)
        self.assertEqual(decode_record(encode_record(entry), "/m").provenance.node, "gw-b")
        old = json.loads(encode_record(entry))
        del old["node"], old["record_digest"]  # neither existed in older records
        self.assertIsNone(decode_record(json.dumps(old).encode(), "/m").provenance.node)

    def test_intake_stamps_the_accepting_node(self) -> None:
        directory = os.path.abspath(self.mktemp())
        spool = make_test_spool(directory, node="gw-a")
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        self.assertEqual(entry.provenance.node, "gw-a")
        self.assertEqual(SpoolDisk(directory).load(entry.queue_id).provenance.node, "gw-a")

    def test_sendmail_import_stamps_the_importing_node(self) -> None:
        directory = daemon_spool(self, os.path.abspath(self.mktemp()))
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            status = sendmail.main(["--spool", directory, "a@example.com"],
                                   stdin=io.BytesIO(b"Subject: cron\n\nall good\n"), environ={})
        finally:
            sys.stderr = stderr
        self.assertEqual(status, 0)
        disk = SpoolDisk(directory, node="gw-c")
        [imported] = disk.scan_incoming().entries
        self.assertEqual(imported.provenance.node, "gw-c")
        self.assertEqual(disk.load(imported.queue_id).provenance.node, "gw-c")

    def test_queue_tool_shows_the_node(self) -> None:
        directory = os.path.abspath(self.mktemp())
        spool = make_test_spool(directory, node="gw-a")
        writer = self.successResultOf(spool.open_writer())
        writer.write(MESSAGE)
        entry = self.successResultOf(writer.commit(ENVELOPE, PROVENANCE))
        spool.close()
        listing = self.run_queue_tool(directory, "list", "--json")
        [message] = json.loads(listing)["messages"]
        self.assertEqual(message["node"], "gw-a")
        self.assertIn("accepted by:   gw-a", self.run_queue_tool(directory, "show", entry.queue_id))

    def run_queue_tool(self, directory: str, *args: str) -> str:
        out = io.StringIO()
        stdout, sys.stdout = sys.stdout, out
        try:
            self.assertEqual(queue_cli.main(["--spool", directory, *args]), 0)
        finally:
            sys.stdout = stdout
        return out.getvalue()
