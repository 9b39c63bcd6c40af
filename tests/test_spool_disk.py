"""
L{gateway.spool.disk.SpoolDisk} is a façade over the spool's modules (layout, accept, incoming,
entries, recovery, quarantine).  The daemon, graphsmtp-sendmail, graphsmtp-queue, bench and
plugin authors' tests all call it, so its surface must not shrink when the parts behind it
move; settings made on the façade after construction must reach the parts that use them.
"""

from __future__ import annotations

import importlib
import os

from twisted.trial.unittest import SynchronousTestCase

import gateway.spool
from gateway.spool.disk import SpoolDisk
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.spool.queueid import new_queue_id
from gateway.testing.spool import FullDiskFileOps

# Every public method SpoolDisk had as one 1,162-line class.
FACADE_METHODS = (
    "ensure_directories", "acquire_lock", "release_lock", "daemon_pid", "create_temp", "append",
    "replace_header_section", "publish", "publish_batch", "discard", "load", "write_record", "remove",
    "fail", "delete", "requeue", "hold", "release", "quarantine", "set_draft", "request_control",
    "scan_incoming", "recover", "queue_ids", "failure_reason",
)
# Names other modules import from gateway.spool.disk.
REEXPORTED = (
    "SpoolLayout", "TempMessage", "CommitRequest", "ControlRequest", "IncomingScan", "RecoveryReport",
    "Quarantined", "EntryMissing", "EntryQuarantined", "SpoolBusy", "MSG", "ENV", "REASON", "ALL", "HOLD_NOTE",
)
PARTS = ("layout", "accept", "incoming", "entries", "recovery", "quarantine")

ENVELOPE = Envelope("app@corp.example", ("alice@corp.example",))
PROVENANCE = Provenance("192.0.2.7", "printer.example", "smtp")


class FacadeTests(SynchronousTestCase):
    def test_every_method_and_name_callers_use_is_still_there(self) -> None:
        disk = SpoolDisk(self.mktemp())
        for name in FACADE_METHODS:
            self.assertTrue(callable(getattr(disk, name, None)), name)
        module = importlib.import_module("gateway.spool.disk")
        for name in REEXPORTED:
            self.assertTrue(hasattr(module, name), name)
            self.assertIn(name, module.__all__)

    def test_replaced_file_operations_reach_every_part(self) -> None:
        disk = SpoolDisk(os.path.abspath(self.mktemp()))
        disk.ensure_directories()
        disk.ops = FullDiskFileOps(budget=0)  # what the condition-log tests do to a running spool
        queue_id = new_queue_id(1.0e9)
        [result] = disk.publish_batch([_request(queue_id)])
        self.assertTrue(getattr(result, "out_of_space", False), result)
        self.assertEqual(disk.queue_ids(), [])

    def test_node_given_to_the_facade_is_stamped_by_the_import(self) -> None:
        disk = SpoolDisk(os.path.abspath(self.mktemp()), node="gw-z")
        disk.ensure_directories()
        queue_id = new_queue_id(1.0e9)
        temp = disk.create_temp(queue_id, incoming=True)
        disk.append(temp, [b"Subject: s\r\n\r\nbody\r\n"])
        disk.publish(temp, SpoolEntry(queue_id, ENVELOPE, PROVENANCE, 1.0, "", temp.size), incoming=True)
        [imported] = disk.scan_incoming().entries
        self.assertEqual((disk.node, imported.provenance.node), ("gw-z", "gw-z"))


class CrashSafetyProseTests(SynchronousTestCase):
    """The protocols are described once, in the package docstring, and every part points there."""

    def test_package_docstring_describes_every_protocol(self) -> None:
        doc = gateway.spool.__doc__ or ""
        for protocol in ("- accept", "- import", "- state change", "- delivered", "- failed", "- requeue",
                         "- hold", "- release", "Scheduling hint", "Completeness rule"):
            self.assertIn(protocol, doc)

    def test_each_part_points_to_it(self) -> None:
        for part in PARTS + ("disk",):
            module = importlib.import_module(f"gateway.spool.{part}")
            self.assertIn("L{gateway.spool}", " ".join((module.__doc__ or "").split()), part)


def _request(queue_id: str):
    from gateway.spool.disk import CommitRequest

    return CommitRequest(SpoolEntry(queue_id, ENVELOPE, PROVENANCE, 1.0, "", 0), data=b"Subject: s\r\n\r\nbody\r\n")
