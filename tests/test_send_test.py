"""
``graphsmtp-send-test`` and ``graphsmtp-sendmail -bv``: a test message through the running
gateway (real spool, real daemon in-process, the fake Graph over HTTPS) or straight to Graph
(``--direct``), with the queue id and a final Postfix-style result line.

The command blocks (it is a CLI) and runs in a thread while the reactor runs the gateway.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.cli import send_test
from gateway.cli.sendmail import main as sendmail_main
from gateway.config import load_config
from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import start_gateway

SENDER = "printer@corp.example"
RECIPIENT = "boss@corp.example"


class SendTestThroughTheDaemon(TestCase):
    timeout = 60

    @inlineCallbacks
    def start(self, graph=True, fake_options=None, queue=None, token_fault=None):
        state = os.path.abspath(self.mktemp())
        text = f'[gateway]\nstate_dir = {json.dumps(state)}\nhostname = "gw.test"\n' \
               '[[listener]]\nname = "local"\nendpoint = "tcp:0:interface=127.0.0.1"\n' \
               'trusted_networks = ["127.0.0.1/32"]\n'
        if queue:
            text += "[queue]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in queue.items())
        if graph:
            self.fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()), **(fake_options or {}))
            self.addCleanup(self.fake.stop)
            if token_fault is not None:
                # Before the gateway starts: a token it fetched on its own before the fault would
                # let the message through (seen once, in a fresh clone's run).
                self.fake.inject(token_fault, operation="token", times=None)
            text += (f'[graph]\ntenant_id = "{self.fake.tenant_id}"\nclient_id = "{self.fake.client_id}"\n'
                     f'client_secret = "{self.fake.client_secret}"\nauthority = "{self.fake.authority}"\n'
                     f'graph_url = "{self.fake.graph_url}"\nca_bundle = {json.dumps(self.fake.ca_path)}\n')
        self.config_path = os.path.abspath(self.mktemp())
        with open(self.config_path, "w") as f:
            f.write(text)
        self.gw = yield start_gateway(self, load_config(self.config_path))

    def run_cli(self, *args, sleep=None, now=time.time, sender=SENDER, recipient=RECIPIENT, **kw):
        out = io.StringIO()

        def blocking():
            return send_test.run(sender, recipient, self.config_path, out=out, environ={},
                                 sleep=sleep or (lambda s: time.sleep(s)), now=now, **kw)

        return deferToThread(blocking).addCallback(lambda code: (code, out.getvalue()))

    @inlineCallbacks
    def test_delivered_through_graph(self):
        yield self.start()
        code, out = yield self.run_cli(timeout=30)
        self.assertEqual(code, 0, out)
        [sent] = self.fake.sent_by(SENDER)
        self.assertEqual(sent.recipients, {RECIPIENT})
        queue_id = out.split(":", 1)[0]
        last = out.strip().splitlines()[-1]
        self.assertTrue(last.startswith(f"{queue_id}: to=<{RECIPIENT}>, relay=graph, mailbox={SENDER}, delay="), last)
        self.assertTrue(last.endswith("status=sent (delivered by the running gateway)"), last)
        self.assertNotIn(self.fake.client_secret, out)

    @inlineCallbacks
    def test_capture_says_nothing_was_sent(self):
        yield self.start(graph=False)
        code, out = yield self.run_cli(timeout=30)
        self.assertEqual(code, 0, out)
        self.assertIn("relay=capture", out)
        self.assertIn("NOT sent", out)
        self.assertEqual(len(self.gw.outbox_messages()), 1)

    @inlineCallbacks
    def test_graph_refusal_bounces_with_advice(self):
        yield self.start(fake_options={"mailboxes": {"someone-else@corp.example"}})
        code, out = yield self.run_cli(timeout=30)
        self.assertEqual(code, 69, out)
        self.assertIn("status=bounced (", out)
        self.assertIn("ErrorInvalidUser", out)
        self.assertIn("what to do: the sending mailbox must be an Exchange Online mailbox", out)

    @inlineCallbacks
    def test_deferred_until_the_timeout(self):
        yield self.start(queue={"retry_schedule": ["1h"]}, token_fault=Fault.status_code(503))
        out_seen = {}
        fake_time = [time.time()]

        def now():
            return fake_time[0]

        def sleep(seconds):
            time.sleep(0.02)
            # Once the daemon's first failed attempt is reported, let the command's time run out.
            if out_seen.get("deferred"):
                fake_time[0] += 3600

        original_write = io.StringIO.write

        class Watching(io.StringIO):
            def write(self, text):
                if "attempt 1 deferred" in text:
                    out_seen["deferred"] = True
                return original_write(self, text)

        out = Watching()
        code = yield deferToThread(send_test.run, SENDER, RECIPIENT, self.config_path, out=out, environ={},
                                   sleep=sleep, now=now, timeout=60)
        text = out.getvalue()
        self.assertEqual(code, 75, text)
        self.assertIn("attempt 1 deferred: no Graph token: the login host answered HTTP 503", text)
        self.assertIn("status=deferred (no Graph token", text)
        self.assertIn("what to do: check the network path", text)

    @inlineCallbacks
    def test_sendmail_bv(self):
        yield self.start()
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        code = yield deferToThread(sendmail_main, ["-bv", "-f", SENDER, "--config", self.config_path, RECIPIENT],
                                   environ={})
        self.assertEqual(code, 0, stdout.getvalue())
        self.assertIn("status=sent", stdout.getvalue())
        self.assertEqual(len(self.fake.sent_by(SENDER)), 1)


class SendTestDirect(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()), mailboxes={SENDER})
        self.addCleanup(self.fake.stop)

    def write(self, secret=None):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = {json.dumps(os.path.abspath(self.mktemp()))}\n'
                    f'[graph]\ntenant_id = "{self.fake.tenant_id}"\nclient_id = "{self.fake.client_id}"\n'
                    f'client_secret = "{secret or self.fake.client_secret}"\nauthority = "{self.fake.authority}"\n'
                    f'graph_url = "{self.fake.graph_url}"\nca_bundle = {json.dumps(self.fake.ca_path)}\n')
        return path

    @inlineCallbacks
    def direct(self, path, sender=SENDER):
        out = io.StringIO()
        code = yield deferToThread(send_test.run, sender, RECIPIENT, path, use_direct=True, out=out, environ={})
        return code, out.getvalue()

    @inlineCallbacks
    def test_direct_send(self):
        code, out = yield self.direct(self.write())
        self.assertEqual(code, 0, out)
        self.assertIn(f"direct: to=<{RECIPIENT}>, relay=graph, mailbox={SENDER}", out)
        self.assertIn("status=sent (Graph 202 Accepted, request-id", out)
        self.assertEqual(len(self.fake.sent_by(SENDER)), 1)

    @inlineCallbacks
    def test_direct_unknown_mailbox(self):
        code, out = yield self.direct(self.write(), sender="nobody@corp.example")
        self.assertEqual(code, 69, out)
        self.assertIn("Graph 404 ErrorInvalidUser", out)
        self.assertIn("what to do:", out)

    @inlineCallbacks
    def test_direct_bad_secret(self):
        code, out = yield self.direct(self.write(secret="wrong-one-Q9"))
        self.assertEqual(code, 69, out)
        self.assertIn("AADSTS7000215 bad client secret", out)
        self.assertIn("what to do: put the secret's Value", out)
        self.assertNotIn("wrong-one-Q9", out)


class SendTestWithoutDaemon(SynchronousTestCase):
    def test_no_daemon_is_a_config_error(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f'[gateway]\nstate_dir = {json.dumps(os.path.abspath(self.mktemp()))}\n')
        out = io.StringIO()
        code = send_test.run(SENDER, RECIPIENT, path, out=out, environ={})
        self.assertEqual(code, 78)
        self.assertIn("no running graphsmtp owns the spool", out.getvalue())

    def test_bad_address_is_usage(self):
        out = io.StringIO()
        self.assertEqual(send_test.run("not an address", RECIPIENT, None, spool=self.mktemp(), out=out, environ={}), 64)

    def test_advice(self):
        self.assertIn("graph.client_secret", send_test.advice("tenant default: token request refused: AADSTS7000215: x"))
        self.assertIn("Mail.Send", send_test.advice("sendMail: Graph 403 ErrorAccessDenied: Access is denied"))
        self.assertEqual(send_test.advice("something else"), "")
