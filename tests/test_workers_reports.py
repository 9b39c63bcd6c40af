"""
Intake reports from workers to the main process (gateway.workers.reports): what a worker counts
is sent about once a second and only when something changed, replayed into the main process's
metrics, and the sessions it runs show on the status page until it ends; the notice pipe never
interleaves a long report with the queue ids written after it.
"""

from __future__ import annotations

import fcntl
import json
import os

import attrs
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from gateway.status.metrics import GatewayMetrics
from gateway.status.worker_intake import WorkerIntake
from gateway.testing.logs import LogCapture
from gateway.workers.channel import CommitNotifier, LineSplitter, queue_id_of
from gateway.workers.reports import (
    MAX_SIZES,
    REPORT_INTERVAL,
    IntakeReporter,
    ReportingMetrics,
    apply_report,
    is_report,
)


@attrs.define
class _Factory:
    sessions: list = attrs.field(factory=list)
    in_flight: int = 0


@attrs.frozen
class _Config:
    name: str


@attrs.frozen
class _Listener:
    config: _Config
    factory: _Factory


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class ReporterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.metrics = ReportingMetrics()
        self.listener = _Listener(_Config("mx"), _Factory())
        self.sent: list[bytes] = []
        self.reporter = IntakeReporter(self.clock, self.metrics, [self.listener], self.sent.append)
        self.reporter.start()

    def reports(self):
        return [json.loads(line) for line in self.sent]

    def test_counts_go_once_a_second_and_only_when_something_changed(self):
        self.metrics.message_accepted("mx", 1234)
        self.metrics.reply_refused("mx", 550)
        self.metrics.policy_refused("mx", "sender-allowlist", 553)
        self.assertEqual(self.sent, [])
        self.clock.advance(REPORT_INTERVAL)
        self.assertEqual(self.reports(), [{"accepted": {"mx": [1234]}, "refused": [["mx", "5xx", 1]],
                                           "policy": [["mx", "sender-allowlist", "5xx", 1]],
                                           "gauges": {"mx": [0, 0]}}])
        self.clock.advance(REPORT_INTERVAL * 5)
        self.assertEqual(len(self.sent), 1, "nothing changed: nothing sent")
        self.assertTrue(all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in self.sent))

    def test_a_session_opening_and_closing_is_reported(self):
        # The factory says so at each change (GatewaySMTPFactory.session_opened & co.).
        self.listener.factory.sessions.append(object())
        self.listener.factory.in_flight = 1
        self.metrics.in_use_changed("mx")
        self.clock.advance(REPORT_INTERVAL)
        self.listener.factory.sessions.clear()
        self.listener.factory.in_flight = 0
        self.metrics.in_use_changed("mx")
        self.clock.advance(REPORT_INTERVAL)
        self.assertEqual([r["gauges"] for r in self.reports()], [{"mx": [1, 1]}, {"mx": [0, 0]}])

    def test_an_idle_worker_has_no_timer(self):
        """Cost follows work (ARCHITECTURE invariant 10): nothing is armed until something changes."""
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.metrics.message_accepted("mx", 10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(REPORT_INTERVAL)
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [], "nothing changed since: no timer")

    def test_a_burst_is_reported_before_the_second_is_up(self):
        for _ in range(MAX_SIZES):
            self.metrics.message_accepted("mx", 10)
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(len(self.reports()[0]["accepted"]["mx"]), MAX_SIZES)

    def test_stopping_sends_what_is_left(self):
        self.metrics.message_accepted("mx", 5)
        self.reporter.stop()
        self.assertEqual(self.reports()[0]["accepted"], {"mx": [5]})
        self.clock.advance(REPORT_INTERVAL * 3)
        self.assertEqual(len(self.sent), 1)


    def test_a_main_process_gone_is_no_error_in_the_worker(self):
        def broken(line):
            raise BrokenPipeError(32, "Broken pipe")
        reporter = IntakeReporter(self.clock, self.metrics, [self.listener], broken)
        self.metrics.message_accepted("mx", 5)
        reporter.stop()
        self.assertEqual(self.metrics.take()["accepted"], {}, "taken by the attempt")


class ApplyTests(SynchronousTestCase):
    def setUp(self):
        self.metrics = GatewayMetrics(process=False)
        self.intake = WorkerIntake()

    def test_events_are_replayed_into_the_main_process_metrics(self):
        line = json.dumps({"accepted": {"mx": [100, 2_000_000]}, "refused": [["mx", "4xx", 3]],
                           "policy": [["mx", "rate-limit", "4xx", 2]], "gauges": {"mx": [4, 1]}}).encode()
        self.assertTrue(is_report(line))
        apply_report(line, 0, self.metrics, self.intake)
        apply_report(line, 1, self.metrics, self.intake)
        self.assertEqual(sample(self.metrics, "graphsmtp_smtp_messages_accepted_total", listener="mx"), 4)
        self.assertEqual(sample(self.metrics, "graphsmtp_message_size_bytes_sum", listener="mx"), 4_000_200)
        self.assertEqual(sample(self.metrics, "graphsmtp_smtp_replies_refused_total", listener="mx",
                                **{"class": "4xx"}), 6)
        self.assertEqual(sample(self.metrics, "graphsmtp_policy_refusals_total", listener="mx", policy="rate-limit",
                                **{"class": "4xx"}), 4)
        self.assertEqual((self.intake.sessions("mx"), self.intake.transactions("mx")), (8, 2))

    def test_the_latest_gauges_count_and_an_ended_worker_takes_its_sessions(self):
        apply_report(b'{"gauges":{"mx":[3,0]}}', 0, self.metrics, self.intake)
        apply_report(b'{"gauges":{"mx":[1,0]}}', 0, self.metrics, self.intake)
        apply_report(b'{"gauges":{"mx":[2,1]}}', 1, self.metrics, self.intake)
        self.assertEqual(self.intake.sessions("mx"), 3)
        self.intake.forget(1)
        self.assertEqual((self.intake.sessions("mx"), self.intake.transactions("mx")), (1, 0))
        self.assertEqual(self.intake.sessions("submission"), 0)

    def test_a_garbled_report_is_one_warning_and_changes_nothing(self):
        logs = LogCapture.install(self)
        apply_report(b'{"accepted":{"mx":["x"]},"gauges":{"mx":[9,9]}}', 2, self.metrics, self.intake)
        apply_report(b'{"gauges":', 2, self.metrics, self.intake)
        self.assertEqual(self.intake.sessions("mx"), 0)
        self.assertEqual(sample(self.metrics, "graphsmtp_smtp_messages_accepted_total", listener="mx"), 0)
        self.assertEqual(len(logs.mentioning("garbled intake report from worker 2")), 2)


class PipeOrderTests(SynchronousTestCase):
    def test_a_report_longer_than_the_pipe_never_splits_the_queue_ids_after_it(self):
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        fcntl.fcntl(read_end, fcntl.F_SETFL, os.O_NONBLOCK)
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
        capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        reactor = MemoryReactor()
        notifier = CommitNotifier(reactor, write_end)
        report = b'{"accepted":{"mx":[' + b",".join([b"1234567"] * (capacity // 4)) + b"]}}\n"
        self.assertGreater(len(report), capacity)
        notifier.send(report)
        ids = [f"1K1E{n:015d}" for n in range(3)]
        for queue_id in ids:
            notifier.committed(type("Entry", (), {"queue_id": queue_id}))
        received: list[bytes] = []
        splitter = LineSplitter(received.append)
        writer = notifier._writer
        while True:
            try:
                splitter.feed(os.read(read_end, 65536))
            except BlockingIOError:
                pass
            if writer.idle:
                break
            writer.doWrite()
        try:
            splitter.feed(os.read(read_end, 65536))
        except BlockingIOError:
            pass
        self.assertEqual(received[0], report.rstrip(b"\n"))
        self.assertEqual([queue_id_of(line) for line in received[1:]], ids)
