"""
graphsmtp-queue --json (stable, documented fields), list filters and the qshape-like summary
(issue 12 item 4), on a real spool.
"""

from __future__ import annotations

import json
import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import queue as queue_cli
from gateway.cli.queue_view import AGE_BUCKETS, bucket_index
from gateway.spool.entry import AttemptRecord, Envelope, Provenance
from gateway.testing.spool import make_test_spool
from gateway.testing.threads import ImmediateReactor

MESSAGE = b"Subject: s\r\nFrom: app@example.com\r\n\r\nbody\r\n"
NOW = 1_700_000_000.0
MESSAGE_KEYS = {"queue_id", "state", "received_at", "age_seconds", "size", "sender", "recipients",
                "sending_mailbox", "node", "attempts", "next_attempt_at", "last_error", "failure_reason",
                "client", "history"}


class JsonAndFilterTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.clock = ImmediateReactor()
        self.clock.advance(NOW - 7200)
        self.spool = make_test_spool(self.directory, self.clock)
        self.addCleanup(self.spool.close)
        self.successResultOf(self.spool.recover_schedule())
        # two hours old, throttled, sent as the printer mailbox, to two domains
        self.old = self.accept("scan@corp.example", ("a@corp.example", "b@partner.example"),
                               mailbox="printer@corp.example", attempts=3, error="Graph 429 throttled",
                               next_at=NOW + 600)
        self.clock.advance(7200 - 120)
        # two minutes old, never tried
        self.new = self.accept("cron@corp.example", ("ops@corp.example",))
        self.failed = self.accept("app@corp.example", ("x@corp.example",), mailbox="app@corp.example")
        self.successResultOf(self.spool.fail(self.failed, "5.1.1 mailbox not found"))
        self.clock.advance(120)

    def accept(self, sender, recipients, mailbox=None, attempts=0, error=None, next_at=0.0):
        writer = self.successResultOf(self.spool.open_writer())
        writer.write(MESSAGE)
        entry = self.successResultOf(writer.commit(
            Envelope(sender, recipients), Provenance("192.0.2.9", "printer.example", "default", tls=True)))
        history = (AttemptRecord(self.clock.seconds(), error),) if error else ()
        entry = attrs.evolve(entry, sending_mailbox=mailbox, attempts=attempts, history=history, next_attempt_at=next_at)
        return self.successResultOf(self.spool.update(entry))

    def run_tool(self, *args):
        self.lines = []
        status = queue_cli.main(["--spool", self.directory, *args], environ={}, out=self.lines.append,
                                clock=lambda: NOW)
        self.assertEqual(status, 0)
        return "\n".join(self.lines)

    def json(self, *args):
        return json.loads(self.run_tool(*args))

    def test_list_json_fields(self):
        document = self.json("list", "--json")
        self.assertEqual(document["version"], 1)
        by_id = {m["queue_id"]: m for m in document["messages"]}
        self.assertEqual(set(by_id), {self.old.queue_id, self.new.queue_id})
        old = by_id[self.old.queue_id]
        self.assertEqual(set(old), MESSAGE_KEYS)
        self.assertEqual(old["state"], "queued")
        self.assertEqual(old["sender"], "scan@corp.example")
        self.assertEqual(old["recipients"], ["a@corp.example", "b@partner.example"])
        self.assertEqual(old["sending_mailbox"], "printer@corp.example")
        self.assertEqual(old["attempts"], 3)
        self.assertEqual(old["age_seconds"], 7200)
        self.assertEqual(old["received_at"], "2023-11-14T20:13:20Z")
        self.assertEqual(old["next_attempt_at"], "2023-11-14T22:23:20Z")
        self.assertEqual(old["last_error"], "Graph 429 throttled")
        self.assertEqual(old["client"], {"address": "192.0.2.9", "name": "printer.example", "listener": "default",
                                         "tls": True, "auth_identity": None})
        self.assertEqual(old["size"], self.old.size)
        new = by_id[self.new.queue_id]
        self.assertIsNone(new["last_error"])
        self.assertEqual(new["history"], [])
        self.assertEqual(new["next_attempt_at"], new["received_at"])  # due now

    def test_failed_and_show_json(self):
        [failed] = self.json("failed", "--json")["messages"]
        self.assertEqual(set(failed), MESSAGE_KEYS)
        self.assertEqual((failed["state"], failed["failure_reason"]), ("failed", "5.1.1 mailbox not found"))
        self.assertIsNone(failed["next_attempt_at"])
        [shown] = self.json("show", self.old.queue_id, "--json")["messages"]
        self.assertEqual(shown["queue_id"], self.old.queue_id)
        self.assertEqual(shown["history"], [{"at": "2023-11-14T20:13:20Z", "reason": "Graph 429 throttled"}])

    def test_filters(self):
        ids = lambda *args: {m["queue_id"] for m in self.json("list", "--json", *args)["messages"]}
        self.assertEqual(ids("--mailbox", "PRINTER@corp.example"), {self.old.queue_id})
        # entries without a recorded mailbox are matched by their sender
        self.assertEqual(ids("--mailbox", "cron@corp.example"), {self.new.queue_id})
        self.assertEqual(ids("--older-than", "1h"), {self.old.queue_id})
        self.assertEqual(ids("--older-than", "3h"), set())
        self.assertEqual(ids("--reason", "THROTTLED"), {self.old.queue_id})
        self.assertEqual(ids("--reason", "throttled", "--older-than", "5m", "--mailbox", "cron@corp.example"), set())
        text = self.run_tool("list", "--reason", "nothing like it")
        self.assertEqual(text, "no message matches")
        self.assertIn(self.failed.queue_id, self.run_tool("failed", "--reason", "mailbox not found"))
        self.assertNotIn(self.failed.queue_id, self.run_tool("failed", "--reason", "throttled"))

    def test_bad_filter_is_usage(self):
        self.patch(queue_cli, "_complain", lambda message: setattr(self, "complaint", message))
        status = queue_cli.main(["--spool", self.directory, "list", "--older-than", "soon"], environ={}, out=print)
        self.assertEqual(status, queue_cli.EX_USAGE)
        self.assertIn("--older-than", self.complaint)

    def test_summary_by_mailbox_and_domain(self):
        text = self.run_tool("summary")
        lines = text.splitlines()
        self.assertEqual(lines[0].split(), ["T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"])
        self.assertEqual(lines[1].split(), ["TOTAL", "2", "1", "0", "0", "0", "0", "1", "0", "0", "0", "0"])
        self.assertEqual(lines[2].split()[0:2], ["cron@corp.example", "1"])
        document = self.json("summary", "--by", "domain", "--json")
        self.assertEqual(document["by"], "domain")
        self.assertEqual(len(document["buckets"]), len(AGE_BUCKETS) + 1)
        rows = {r["name"]: r for r in document["rows"]}
        self.assertEqual(rows["corp.example"]["count"], 2)
        self.assertEqual(rows["partner.example"]["counts"][bucket_index(7200)], 1)
        self.assertEqual(document["total"]["count"], 2)
        failed = self.json("summary", "--state", "failed", "--json")
        self.assertEqual([r["name"] for r in failed["rows"]], ["app@corp.example"])

    def test_bucket_edges(self):
        self.assertEqual(bucket_index(0), 0)
        self.assertEqual(bucket_index(300), 0)
        self.assertEqual(bucket_index(301), 1)
        self.assertEqual(bucket_index(1280 * 60 + 1), len(AGE_BUCKETS))
