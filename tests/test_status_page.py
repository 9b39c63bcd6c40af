"""
The human status page at ``/`` and the prometheus-client ``/metrics``, read over real loopback
HTTP from a whole gateway that delivered into the fake Graph: one message delivered, one
deferred (its mailbox throttled for an hour), one failed, one recipient refused by a policy.
"""

from __future__ import annotations

import json
import os
import re
import smtplib

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import send_message, start_gateway
from gateway.testing.logs import LogCapture
from tests.status_helpers import (
    DEFERRED_FROM,
    DELIVERED_FROM,
    FAILED_FROM,
    get,
    http_client,
    make_traffic,
    message,
    read_page,
    start_status_gateway,
)

TOKEN_OUTAGE_MESSAGE = b"From: a@corp.example\r\nTo: b@corp.example\r\nSubject: s\r\n\r\nbody\r\n"
DASHBOARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "grafana",
                         "graphsmtp-dashboard.json")


class StatusPageTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.gw, self.fake, self.base = yield start_status_gateway(self, status={"refresh": 15})
        self.http = http_client(self)
        self.entries = yield make_traffic(self.gw, self.fake)

    @inlineCallbacks
    def page(self):
        response, body = yield get(self.http, self.base + "/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/html", response.headers.getRawHeaders(b"content-type")[0])
        return read_page(body), body

    @inlineCallbacks
    def test_gateway_and_listeners(self):
        page, _ = yield self.page()
        self.assertIn("gateway.test", page.title)
        self.assertEqual(page.meta_refresh, "15")
        self.assertEqual(page.scripts, 0)
        [listener] = page.rows("listeners")
        self.assertEqual(listener["name"], "local")
        self.assertEqual(listener["state"], "listening")
        self.assertEqual((listener["TLS"], listener["AUTH"]), ("none", "none"))
        self.assertIn("interface=127.0.0.1", listener["endpoint"])
        self.assertEqual(listener["open sessions"], "0")

    @inlineCallbacks
    def test_tenant_token_state_and_mailbox_pacing(self):
        page, _ = yield self.page()
        [tenant] = page.rows("tenants")
        self.assertEqual(tenant["tenant"], "default")
        self.assertEqual(tenant["token state"], "ok")
        # The fake's token lives an hour: its expiry is shown as a time and as "in ...".
        self.assertRegex(tenant["token expires"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in (59m|1h)")
        mailboxes = {row["mailbox"]: row for row in page.rows("mailboxes")}
        self.assertIn(DELIVERED_FROM, mailboxes)
        paused = mailboxes[DEFERRED_FROM]
        self.assertRegex(paused["paused until"], r"^in (59m|1h)")
        self.assertIn("throttled", paused["reason"].lower())
        self.assertEqual(mailboxes[DELIVERED_FROM]["paused until"], "-")
        self.assertEqual(paused["in flight"], "0")

    @inlineCallbacks
    def test_queue_counts_shape_reasons_and_failed(self):
        page, _ = yield self.page()
        [counts] = page.rows("queue-counts")
        self.assertRegex(counts.pop("oldest message"), r"^\d+s$")
        self.assertEqual(counts, {"queued": "1", "active": "0", "deferred": "1", "waiting": "0", "failed": "1"})
        [by_mailbox] = page.rows("shape-mailbox")
        self.assertEqual((by_mailbox["mailbox"], by_mailbox["total"], by_mailbox["<5m"]), (DEFERRED_FROM, "1", "1"))
        [by_domain] = page.rows("shape-domain")
        self.assertEqual((by_domain["domain"], by_domain["total"]), ("fabrikam.example", "1"))
        [reason] = page.rows("deferral-reasons")
        self.assertIn("429", reason["reason"])
        self.assertEqual(reason["messages"], "1")
        [failed] = page.rows("failed")
        self.assertEqual(failed["queue id"], self.entries["failed"].queue_id)
        self.assertEqual(failed["from"], FAILED_FROM)
        self.assertEqual(failed["to"], "carol@corp.example")
        self.assertIn("ErrorInvalidUser", failed["reason"])

    @inlineCallbacks
    def test_recent_outcomes(self):
        page, _ = yield self.page()
        recent = {row["queue id"]: row for row in page.rows("recent")}
        delivered = recent[self.entries["delivered"].queue_id]
        self.assertEqual((delivered["from"], delivered["to"], delivered["status"]),
                         (DELIVERED_FROM, "alice@corp.example", "delivered"))
        # The sending mailbox decided at intake (older spool records have none: "-").
        self.assertEqual(delivered["mailbox"], self.entries["delivered"].sending_mailbox or "-")
        self.assertRegex(delivered["delay"], r"^\d+s$")
        self.assertEqual(recent[self.entries["deferred"].queue_id]["status"], "deferred")
        self.assertEqual(recent[self.entries["failed"].queue_id]["status"], "failed")

    @inlineCallbacks
    def test_no_secret_on_the_page(self):
        _, body = yield self.page()
        self.assertNotIn(self.fake.client_secret.encode(), body)
        self.assertNotIn(b"Bearer", body)
        self.assertNotIn(b"eyJ", body)  # no JWT-shaped token

    @inlineCallbacks
    def test_healthz_is_still_json_without_addresses(self):
        response, body = yield get(self.http, self.base + "/healthz")
        self.assertEqual(response.code, 200)
        state = json.loads(body)
        self.assertEqual(state["queue"]["delivered_total"], 1)
        self.assertNotIn(b"corp.example", body)


class MetricsTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.gw, self.fake, self.base = yield start_status_gateway(self)
        self.http = http_client(self)
        self.entries = yield make_traffic(self.gw, self.fake)
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            # Refused at RCPT by the listener's recipient-rules policy.
            yield send_message(self.gw.port("local"), DELIVERED_FROM, ["x@blocked.example"],
                               message(DELIVERED_FROM, "x@blocked.example", "no"))
        response, body = yield get(self.http, self.base + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        self.text = body.decode("utf-8")
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}

    def samples(self, name, **labels):
        family = self.families[name]
        return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, sample_name, **labels):
        family_name = re.sub(r"(_total|_bucket|_count|_sum|_created)$", "", sample_name)
        matches = [s for s in self.families[family_name].samples
                   if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
        self.assertEqual(len(matches), 1, (sample_name, labels, matches))
        return matches[0].value

    def test_intake_counters_per_listener_and_outcome(self):
        self.assertEqual(self.families["graphsmtp_smtp_messages_accepted"].type, "counter")
        self.assertEqual(self.value("graphsmtp_smtp_messages_accepted_total", listener="local"), 3)
        self.assertGreaterEqual(self.value("graphsmtp_smtp_replies_refused_total", listener="local", **{"class": "5xx"}), 1)
        self.assertEqual(self.value("graphsmtp_policy_refusals_total", listener="local", policy="recipient-rules",
                                    **{"class": "5xx"}), 1)

    def test_histograms(self):
        self.assertEqual(self.families["graphsmtp_graph_request_duration_seconds"].type, "histogram")
        self.assertEqual(self.value("graphsmtp_graph_request_duration_seconds_count", operation="sendMail", status="202"), 1)
        self.assertGreaterEqual(self.value("graphsmtp_graph_request_duration_seconds_count", operation="sendMail",
                                           status="429"), 1)
        self.assertEqual(self.value("graphsmtp_graph_request_duration_seconds_count", operation="sendMail", status="404"), 1)
        self.assertEqual(self.value("graphsmtp_queue_delay_seconds_count"), 1)
        self.assertEqual(self.value("graphsmtp_queue_delay_seconds_bucket", le="+Inf"), 1)
        self.assertEqual(self.value("graphsmtp_message_size_bytes_count", listener="local"), 3)
        self.assertGreater(self.value("graphsmtp_message_size_bytes_sum", listener="local"), 3 * 50)

    def test_state_gauges(self):
        self.assertEqual(self.value("graphsmtp_queue_state_messages", state="deferred"), 1)
        self.assertEqual(self.value("graphsmtp_queue_state_messages", state="failed"), 1)
        self.assertGreaterEqual(self.value("graphsmtp_queue_oldest_message_age_seconds"), 0)
        self.assertEqual(self.value("graphsmtp_mailbox_paused", mailbox=DEFERRED_FROM), 1)
        self.assertEqual(self.value("graphsmtp_mailbox_paused", mailbox=DELIVERED_FROM), 0)
        self.assertEqual(self.value("graphsmtp_mailbox_in_flight", mailbox=DEFERRED_FROM), 0)
        self.assertEqual(self.value("graphsmtp_tenant_state", tenant="default", state="ok"), 1)
        self.assertEqual(self.value("graphsmtp_tenant_state", tenant="default", state="needs-admin"), 0)
        expiry = self.value("graphsmtp_tenant_token_expiry_timestamp_seconds", tenant="default")
        now = self.gw.service.reactor.seconds()
        self.assertTrue(now + 3000 < expiry < now + 3700, expiry - now)
        self.assertEqual(self.value("graphsmtp_listener_up", listener="local"), 1)

    def test_process_metrics_and_kept_names(self):
        self.assertGreater(self.value("process_resident_memory_bytes"), 0)
        self.assertEqual(self.value("graphsmtp_delivered_total"), 1)
        self.assertEqual(self.value("graphsmtp_failed_total"), 1)
        self.assertEqual(self.value("graphsmtp_queue_messages"), 1)
        self.assertIn("graphsmtp_smtp_sessions", self.families)
        self.assertEqual(self.value("graphsmtp_tenant_ok", tenant="default", state="ok"), 1)

    def test_no_secret_in_metrics(self):
        self.assertNotIn(self.fake.client_secret, self.text)
        self.assertNotIn("Bearer", self.text)

    def test_dashboard_uses_only_served_metrics(self):
        with open(DASHBOARD, encoding="utf-8") as f:
            dashboard = json.load(f)
        exprs = [target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", ())]
        self.assertGreater(len(exprs), 8)
        served = {s.name for family in self.families.values() for s in family.samples} | set(self.families)
        referenced = set()
        for expr in exprs:
            referenced |= {name for name in re.findall(r"\b((?:graphsmtp|process)_[a-z0-9_]+)\b", expr)}
        self.assertTrue(referenced)
        self.assertEqual(sorted(referenced - served), [])
        # Every family the gateway itself defines is on the dashboard somewhere.
        ours = {name for name in self.families if name.startswith("graphsmtp_")
                and not name.startswith("graphsmtp_auth_") and not name.endswith("_created")}
        shown = {re.sub(r"(_total|_bucket|_count|_sum)$", "", name) for name in referenced}
        self.assertEqual(sorted(ours - shown - {"graphsmtp_build_info", "graphsmtp_start_time_seconds"}), [])


def _panels(dashboard):
    for panel in dashboard.get("panels", ()):
        yield panel
        yield from panel.get("panels", ())


class NeedsAdminTests(TestCase):
    """A tenant whose secret Entra refuses reads "needs admin", with the error and the action."""

    timeout = 90

    @inlineCallbacks
    def test_refused_credentials_show_needs_admin_with_action(self):
        from gateway.testing.fake_graph import Fault

        gw, fake, base = yield start_status_gateway(
            self, before=lambda fake: fake.inject(Fault.invalid_client(), operation="token", times=None))
        yield send_message(gw.port("local"), DELIVERED_FROM, ["alice@corp.example"],
                           message(DELIVERED_FROM, "alice@corp.example", "held"))
        yield gw.outcomes(1, ("deferred",))
        response, body = yield get(http_client(self), base + "/")
        self.assertEqual(response.code, 200)
        [tenant] = read_page(body).rows("tenants")
        self.assertEqual(tenant["token state"], "needs admin")
        self.assertIn("AADSTS7000215", tenant["last error"])
        self.assertIn("Action: put the secret's Value", tenant["last error"])
        self.assertRegex(tenant["paused until"], r"^in ")
        self.assertNotIn(fake.client_secret.encode(), body)
        response, body = yield get(http_client(self), base + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        states = {s.labels["state"]: s.value for s in families["graphsmtp_tenant_state"].samples}
        self.assertEqual(states, {"ok": 0, "degraded": 0, "needs-admin": 1, "unknown": 0})


class TokenOutageHealthTests(TestCase):
    """
    A token endpoint answering 5xx is an unhealthy gateway: ``/healthz`` 503 and
    ``graphsmtp_tenant_ok`` 0 (it once stayed 200 and 1), and the log does not say only
    ``internal: MsalServiceError``.
    """

    timeout = 60

    @inlineCallbacks
    def test_token_endpoint_5xx_is_not_healthy(self):
        fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(fake.stop)
        capture = LogCapture.install(self)
        fake.inject(Fault.status_code(503), operation="token", times=None)
        gw = yield start_gateway(self, {
            "graph": {"tenant_id": fake.tenant_id, "client_id": fake.client_id, "client_secret": fake.client_secret,
                      "authority": fake.authority, "graph_url": fake.graph_url, "ca_bundle": fake.ca_path},
            "status": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        port = yield gw.status_port()
        code, _ = yield send_message(gw.port(), "a@corp.example", ["b@corp.example"], TOKEN_OUTAGE_MESSAGE)
        self.assertEqual(code, 250)
        yield gw.outcomes(1)
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = yield http.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        body = yield response.content()
        self.assertEqual(response.code, 503, body)
        self.assertNotEqual(json.loads(body)["status"], "ok")
        response = yield http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        metrics = (yield response.content()).decode()
        self.assertIn('graphsmtp_tenant_ok{state="degraded",tenant="default"} 0.0', metrics)
        self.assertNotIn("MsalServiceError", capture.text())
