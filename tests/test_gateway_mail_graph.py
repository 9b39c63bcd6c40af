"""
End to end for issue 8: SMTP in over STARTTLS + AUTH, Graph out (real gateway, real deliverer,
fake Graph over HTTPS).  The mailbox Graph is asked to send as is always one the login was
allowed, whatever the header section tries; and while one client's monstrous From is judged,
another client is served.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import threading

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.python.threadable import isInIOThread
from twisted.trial.unittest import TestCase

from gateway.smtp import intake
from gateway.testing.certs import TestCA
from gateway.testing.fake_graph import start_fake_graph
from gateway.testing.harness import LOOPBACK_EPHEMERAL, start_gateway
from tests.auth_helpers import make_users_file

PASSWORD = "alice's long password 7Qx!"


class GraphMailboxTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.fake = yield start_fake_graph(reactor, os.path.join(directory, "graph"))
        self.addCleanup(self.fake.stop)
        self.ca = TestCA.create(os.path.join(directory, "ca"))
        issued = self.ca.issue()
        users = os.path.join(directory, "users.jsonl")
        make_users_file(users, {"alice": (PASSWORD, ["alice@corp.example"])})
        self.gw = yield start_gateway(self, {
            "auth": {"users_file": users},
            "listener": [{
                "name": "submission", "endpoint": LOOPBACK_EPHEMERAL, "tls": "starttls", "auth": "required",
                "tls_cert": issued.cert_path, "tls_key": issued.key_path,
            }],
            "graph": {
                "tenant_id": self.fake.tenant_id, "client_id": self.fake.client_id,
                "client_secret": self.fake.client_secret, "authority": self.fake.authority,
                "graph_url": self.fake.graph_url, "ca_bundle": self.fake.ca_path,
            },
            "queue": {"retry_schedule": ["1s"], "jitter": 0.0},
        })

    def send(self, message: bytes, sender: str = "alice@corp.example"):
        def blocking():
            context = ssl.create_default_context(cafile=self.ca.ca_cert_path)
            with smtplib.SMTP("127.0.0.1", self.gw.port(), timeout=60) as client:
                client.ehlo("client.test")
                client.starttls(context=context)
                client.ehlo("client.test")
                client.login("alice", PASSWORD)
                client.mail(sender)
                client.rcpt("team@corp.example")
                return client.data(message)
        return deferToThread(blocking)

    @inlineCallbacks
    def test_graph_only_ever_sends_as_the_permitted_mailbox(self):
        attacks = [
            b"To: team@corp.example\r\nSubject: q\r\nFrom : CEO <ceo@corp.example>\r\n\r\nbody\r\n",
            b"From: alice@corp.example\r\nTo: team@corp.example\r\nFrom : CEO <ceo@corp.example>\r\n\r\nbody\r\n",
            b"From : CEO <ceo@corp.example>\r\nTo: team@corp.example\r\n\r\nbody\r\n",
            b"From\t: ceo@corp.example\r\nTo: team@corp.example\r\n\r\nbody\r\n",
            b"From ceo@corp.example Mon Jan  1 00:00:00 2024\r\nFrom: alice@corp.example\r\n\r\nbody\r\n",
            b"From: alice@corp.example\r\nSender: ceo@corp.example\r\n\r\nbody\r\n",
            b"From: alice@corp.example\r\nFrom: ceo@corp.example\r\n\r\nbody\r\n",
            b'From: "ceo@corp.example" <alice@corp.example>\r\n\r\nbody\r\n',
        ]
        replies = []
        for attack in attacks:
            code, text = yield self.send(attack)
            replies.append((attack, code, text))
        code, _ = yield self.send(b"From: Alice <alice@corp.example>\r\nTo: team@corp.example\r\n\r\nhello\r\n")
        self.assertEqual(code, 250)
        accepted = 1 + sum(1 for _, code, _ in replies if code == 250)
        yield self.gw.outcomes(accepted)
        # What Graph was asked to send as: only ever the login's own mailbox.
        self.assertEqual({m.mailbox for m in self.fake.sent}, {"alice@corp.example"})
        self.assertEqual(self.fake.sent_by("ceo@corp.example"), [])
        for attack, code, text in replies:
            self.assertEqual(code // 100, 5, (attack, code, text))

    @inlineCallbacks
    def test_other_clients_are_served_while_an_encoded_word_flood_is_judged(self):
        """
        Finding 2 end to end: the flood is judged off the reactor thread.  The judge is held
        (an Event, not a sleep) until another client's EHLO has been answered; were it on the
        reactor thread, that EHLO could not be answered first.
        """
        flood = b"From: " + b"\r\n ".join([b" ".join([b"=?utf-8?q?a?="] * 50)] * 356) + b"\r\n <alice@corp.example>\r\n\r\nx\r\n"
        events = []
        judging, ehlo_answered = threading.Event(), threading.Event()
        original = intake.judge_header_section

        def held_judge(*args, **kwargs):
            events.append(("judge on reactor thread", isInIOThread()))
            judging.set()
            ehlo_answered.wait(60)
            return original(*args, **kwargs)

        self.patch(intake, "judge_header_section", held_judge)

        def flood_client():
            context = ssl.create_default_context(cafile=self.ca.ca_cert_path)
            with smtplib.SMTP("127.0.0.1", self.gw.port(), timeout=60) as client:
                client.ehlo("client.test")
                client.starttls(context=context)
                client.ehlo("client.test")
                client.login("alice", PASSWORD)
                client.mail("alice@corp.example")
                client.rcpt("team@corp.example")
                reply = client.data(flood)
                events.append("flood-reply")
                return reply

        def ehlo_client():
            judging.wait(60)
            with smtplib.SMTP("127.0.0.1", self.gw.port(), timeout=60) as client:
                code, _ = client.ehlo("other.test")
                events.append("ehlo")
            ehlo_answered.set()
            return code

        results = yield DeferredList([deferToThread(flood_client), deferToThread(ehlo_client)], fireOnOneErrback=True)
        (_, (code, text)), (_, ehlo_code) = results
        self.assertEqual((code, text[:5]), (552, b"5.3.4"), text)
        self.assertIn(b"encoded words", text)
        self.assertEqual(ehlo_code, 250)
        self.assertEqual(events, [("judge on reactor thread", False), "ehlo", "flood-reply"])
