"""
The status package's small parts on their own: bounded recent outcomes, the tenant-health
adapter, Graph operation names (bounded label values), policy refusal counting, qshape buckets,
and the metrics registry being per gateway rather than module state.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.delivery.graph.tenant_health import TenantStatus as TenantHealth
from gateway.delivery.interfaces import Delivered, Permanent
from gateway.policy.interfaces import Continue, Reject, TempFail
from gateway.spool.entry import Envelope, Provenance, SpoolEntry
from gateway.status.metrics import GatewayMetrics, exposition, graph_operation
from gateway.status.policy_counts import CountingPolicy
from gateway.status.queueview import BUCKET_LABELS, bucket_of
from gateway.status.recent import RecentDeliveries
from gateway.status.sources import tenant_status


def entry(queue_id, received_at=0.0, mailbox=None):
    return SpoolEntry(queue_id, Envelope("a@x.example", ("b@y.example",)), Provenance("127.0.0.1", "c", "l"),
                      received_at, "/nonexistent", 10, sending_mailbox=mailbox)


class RecentDeliveriesTests(SynchronousTestCase):
    def test_bounded_newest_first_with_delay_and_mailbox(self):
        clock = Clock()
        recent = RecentDeliveries(clock, size=3)
        for i in range(5):
            clock.advance(10)
            recent.delivered(entry(f"Q{i}", received_at=clock.seconds() - 4, mailbox="shared@x.example"), Delivered("ok"))
        clock.advance(1)
        recent.failed(entry("QF", received_at=0.0), Permanent("mailbox not found", status="5.1.1"))
        items = recent.snapshot()
        self.assertEqual([i.queue_id for i in items], ["QF", "Q4", "Q3"])
        self.assertEqual((items[1].mailbox, items[1].delay, items[1].status), ("shared@x.example", 4.0, "delivered"))
        self.assertEqual(items[0].detail, "5.1.1 mailbox not found")


class TenantStatusTests(SynchronousTestCase):
    def test_states_map_to_ok_degraded_needs_admin(self):
        self.assertEqual(tenant_status(TenantHealth("default", "ok", token_expires_at=99.0)).state, "ok")
        degraded = tenant_status(TenantHealth("default", "degraded", "connection refused"))
        self.assertEqual(degraded.state, "degraded")
        self.assertIn("login.microsoftonline.com", degraded.admin_action)
        needs = tenant_status(TenantHealth("t2", "needs-admin", "AADSTS7000215: Invalid client secret", paused_until=50.0))
        self.assertEqual((needs.state, needs.last_error, needs.paused_until), ("needs admin", "AADSTS7000215: Invalid client secret", 50.0))
        self.assertIn("consent", needs.admin_action)
        self.assertIsNone(tenant_status(TenantHealth("x", "unknown")).token_expires_at)

    def test_the_monitors_own_action_passes_through(self):
        status = tenant_status(TenantHealth("t", "needs-admin", "AADSTS65001", "Grant admin consent", since=1.0,
                                            token_expires_at=123.0))
        self.assertEqual((status.state, status.last_error, status.admin_action, status.since, status.token_expires_at),
                         ("needs admin", "AADSTS65001", "Grant admin consent", 1.0, 123.0))
        self.assertEqual(tenant_status(TenantHealth("t", "ok", "stale", "stale action")).admin_action, "")


class CaptureStatusSourceTests(SynchronousTestCase):
    """
    The status source of a capture gateway (no tenants, no [cluster]) read through its typed
    interfaces: no probing for attributes, and the same answers as before.
    """

    def source(self):
        from gateway.service import GatewayOptions, makeService
        from gateway.status.sources import ComponentsStatusSource
        from gateway.testing.harness import gateway_config

        service = makeService(GatewayOptions(gateway_config(self), install_signal_handlers=False), Clock())
        self.addCleanup(service.components.plugin_search.undo)
        return service.components, ComponentsStatusSource(service.components, Clock(), "gw.example", "1.0", 0.0,
                                                          lambda f, *args: succeed(f(*args)))

    def test_cluster_is_part_of_the_status_interface(self):
        from zope.interface.verify import verifyObject

        from gateway.status.interfaces import IStatusSource

        self.assertIn("cluster", IStatusSource.names())
        self.assertTrue(verifyObject(IStatusSource, self.source()[1]))

    def test_capture_metrics_have_no_tenants_and_no_cluster(self):
        from gateway.status.metrics import StatusCollector

        components, source = self.source()
        self.assertEqual((source.tenants(), source.cluster()), ((), None))
        metrics = GatewayMetrics(process=False)
        metrics.registry.register(StatusCollector(source))
        families = {f.name: f for f in text_string_to_metric_families(exposition(metrics.registry).decode())}
        self.assertNotIn("graphsmtp_cluster_state", families)
        self.assertEqual(families["graphsmtp_tenant_ok"].samples, [])
        self.assertIn("graphsmtp_queue_messages", families)

    def test_a_routing_key_that_is_not_a_mailbox_key_is_shown_as_itself(self):
        components, source = self.source()
        components.runner.mailboxes.push("plain@x.example", "Q1", 0.0)
        [row] = source.mailboxes()
        self.assertEqual((row.mailbox, row.in_flight, row.pause_reason), ("plain@x.example", 0, ""))


class GraphOperationTests(SynchronousTestCase):
    def test_names_are_bounded(self):
        base = "https://graph.microsoft.com/v1.0/users/a%40b.example"
        cases = {
            ("POST", base + "/sendMail"): "sendMail",
            ("POST", base + "/messages"): "create_draft",
            ("PATCH", base + "/messages/AAMkAGI2TAAA="): "patch_message",
            ("DELETE", base + "/messages/AAMkAGI2TAAA="): "delete_message",
            ("POST", base + "/messages/AAMkAGI2TAAA=/attachments"): "add_attachment",
            ("POST", base + "/messages/AAMkAGI2TAAA=/attachments/createUploadSession"): "create_upload_session",
            ("POST", base + "/messages/AAMkAGI2TAAA=/send"): "send_draft",
            ("PUT", "https://outlook.office.com/api/v2.0/Users('x')/Messages('y')/AttachmentSessions('z')?authtoken=q"): "upload_chunk",
        }
        for (method, url), name in cases.items():
            self.assertEqual(graph_operation(method, url), name, url)


class _Policy:
    def __init__(self, verdict):
        self.verdict = verdict

    def on_connect(self, session):
        return self.verdict

    def on_mail_from(self, session, sender):
        return succeed(self.verdict)

    def on_rcpt_to(self, session, recipient):
        return self.verdict

    def on_message(self, session, message):
        return self.verdict


class CountingPolicyTests(SynchronousTestCase):
    def test_counts_refusals_only_and_passes_verdicts_through(self):
        counted = []
        reject = Reject(554, "5.7.1", "no")
        policy = CountingPolicy(_Policy(reject), "recipient-rules", lambda name, code: counted.append((name, code)))
        self.assertIs(policy.on_rcpt_to(None, "x"), reject)
        self.assertIs(self.successResultOf(policy.on_mail_from(None, "x")), reject)
        CountingPolicy(_Policy(TempFail()), "rate-limit", lambda n, c: counted.append((n, c))).on_connect(None)
        CountingPolicy(_Policy(Continue()), "quiet", lambda n, c: counted.append((n, c))).on_message(None, None)
        self.assertEqual(counted, [("recipient-rules", 554), ("recipient-rules", 554), ("rate-limit", 451)])


class MetricsRegistryTests(SynchronousTestCase):
    def test_each_gateway_has_its_own_registry(self):
        one, two = GatewayMetrics(process=False), GatewayMetrics(process=False)
        one.message_accepted("in", 100)
        one.reply_refused("in", 550)
        one.policy_refused("in", "size-limit", 552)
        families = {f.name: f for f in text_string_to_metric_families(exposition(one.registry).decode())}
        [accepted] = [s for s in families["graphsmtp_smtp_messages_accepted"].samples if s.name.endswith("_total")]
        self.assertEqual((accepted.labels, accepted.value), ({"listener": "in"}, 1.0))
        other = {f.name: f for f in text_string_to_metric_families(exposition(two.registry).decode())}
        self.assertEqual([s for s in other["graphsmtp_smtp_messages_accepted"].samples], [])

    def test_a_listeners_counters_count_in_its_own_series(self):
        """Each listener's series is looked up once and kept (issue 13); the listeners still count apart."""
        metrics = GatewayMetrics(process=False)
        looked_up = []

        def counted(real):
            def labels(*values):
                looked_up.append(values)
                return real(*values)
            return labels

        for metric in (metrics.smtp_accepted, metrics.message_size):
            metric.labels = counted(metric.labels)
        mx, submission = metrics.intake_for("mx"), metrics.intake_for("submission")
        mx.message_accepted(100)
        mx.message_accepted(300)
        submission.message_accepted(5000)
        registry = metrics.registry
        self.assertEqual(
            [registry.get_sample_value(name, {"listener": listener})
             for listener in ("mx", "submission")
             for name in ("graphsmtp_smtp_messages_accepted_total", "graphsmtp_message_size_bytes_count",
                          "graphsmtp_message_size_bytes_sum")],
            [2.0, 2.0, 400.0, 1.0, 1.0, 5000.0])
        self.assertEqual(sorted(looked_up), [("mx",), ("mx",), ("submission",), ("submission",)])


class BucketTests(SynchronousTestCase):
    def test_qshape_buckets_double(self):
        self.assertEqual(BUCKET_LABELS[0], "<5m")
        self.assertEqual([bucket_of(s) for s in (0, 299, 300, 599, 600, 1199, 1280 * 60, 10 ** 7)], [0, 0, 1, 1, 2, 2, 9, 9])


class QueueScanTests(SynchronousTestCase):
    """scan_queue on a real spool directory: states, buckets, the oldest-first limit, failed reasons."""

    def put(self, disk, queue_id, received_at, sender, recipients, attempts=0, history=(), mailbox=None):
        from gateway.spool.entry import AttemptRecord

        temp = disk.create_temp(queue_id)
        disk.append(temp, [b"Subject: x\r\n\r\nbody\r\n"])
        entry = SpoolEntry(queue_id, Envelope(sender, tuple(recipients)), Provenance("127.0.0.1", "c", "l"),
                           received_at, temp.path, 0, attempts=attempts,
                           history=tuple(AttemptRecord(received_at, r) for r in history), sending_mailbox=mailbox)
        return disk.publish(temp, entry)

    def test_scan(self):
        import os

        from gateway.spool.disk import SpoolDisk
        from gateway.spool.queueid import new_queue_id
        from gateway.status.queueview import scan_queue

        disk = SpoolDisk(os.path.abspath(self.mktemp()))
        disk.ensure_directories()
        now = 1_000_000.0
        old = new_queue_id(now - 7200)
        mid = new_queue_id(now - 900)
        new = new_queue_id(now - 10)
        self.put(disk, old, now - 7200, "a@x.example", ["u@one.example", "v@two.example"], attempts=3,
                 history=("Graph 503", "Graph 429 throttled"), mailbox="Shared@X.example")
        self.put(disk, mid, now - 900, "b@x.example", ["w@one.example"], attempts=1, history=("Graph 429 throttled",))
        failing = self.put(disk, new, now - 10, "c@x.example", ["z@three.example"])
        disk.fail(failing, "5.1.1 mailbox not found")

        view = scan_queue(disk, now, in_flight={mid})
        self.assertEqual(view.counts, {"active": 1, "deferred": 1, "waiting": 0, "failed": 1})
        self.assertEqual((view.queued, view.examined, view.oldest_age), (2, 2, 7200.0))
        shape = {row.key: row for row in view.by_mailbox}
        self.assertEqual(shape["shared@x.example"].counts[view.bucket_labels.index("<160m")], 1)
        self.assertEqual(shape["b@x.example"].counts[view.bucket_labels.index("<20m")], 1)
        domains = {row.key: row.total for row in view.by_domain}
        self.assertEqual(domains, {"one.example": 2, "two.example": 1})
        self.assertEqual(view.deferral_reasons, (("Graph 429 throttled", 2),))
        [failed] = view.failed
        self.assertEqual((failed.queue_id, failed.reason, failed.recipients), (new, "5.1.1 mailbox not found", ("z@three.example",)))

        limited = scan_queue(disk, now, limit=1)
        self.assertEqual((limited.queued, limited.examined, limited.oldest_age), (2, 1, 7200.0))
        self.assertEqual(limited.counts["deferred"] + limited.counts["waiting"], 2)
