"""
Throttle-aware delivery end to end (ARCHITECTURE invariant 7): a burst over SMTP for several
sending mailboxes, one of them throttled by Graph with Retry-After, through the real queue
runner, Graph deliverer and the fake Graph over HTTPS.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.testing.fake_graph import Fault, start_fake_graph
from gateway.testing.harness import send_message, start_gateway

MAILBOXES = [f"app{i}@corp.example" for i in range(4)]
PER_MAILBOX = 8
RETRY_AFTER = 2


class BurstTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_throttled_mailbox_pauses_alone_and_limits_hold(self):
        fake = yield start_fake_graph(reactor, os.path.abspath(self.mktemp()))
        self.addCleanup(fake.stop)
        gw = yield start_gateway(self, {
            "graph": {
                "tenant_id": fake.tenant_id, "client_id": fake.client_id, "client_secret": fake.client_secret,
                "authority": fake.authority, "graph_url": fake.graph_url, "ca_bundle": fake.ca_path,
                "mailbox_concurrency": 2, "mailbox_rate": 6000,
            },
            "queue": {"retry_schedule": ["1s"], "jitter": 0.0},
        })
        throttled = MAILBOXES[0]
        fake.inject(Fault.throttled(retry_after=str(RETRY_AFTER)), mailbox=throttled, operation="sendMail", times=1)

        def mime(sender: str, n: int) -> bytes:
            return f"From: {sender}\r\nTo: ops@corp.example\r\nSubject: burst {n}\r\n\r\nbody {n}\r\n".encode()

        sends = [
            send_message(gw.port(), sender, ["ops@corp.example"], mime(sender, n))
            for n in range(PER_MAILBOX) for sender in MAILBOXES
        ]
        yield gatherResults(sends, consumeErrors=True)
        yield gw.delivered(PER_MAILBOX * len(MAILBOXES))

        for mailbox in MAILBOXES:
            self.assertEqual(len(fake.sent_by(mailbox)), PER_MAILBOX, mailbox)
            self.assertLessEqual(fake.max_concurrency.get(mailbox, 0), 2, mailbox)

        sends_of = lambda m: [r for r in fake.requests if r.operation == "sendMail" and r.mailbox == m]  # noqa: E731
        [first_429] = [r for r in sends_of(throttled) if r.status == 429]
        paused_until = first_429.at + RETRY_AFTER
        during_pause = [r for r in sends_of(throttled) if first_429.at < r.at < paused_until - 0.01]
        # Only a request already on its way when the 429 was sent may arrive afterwards (at most
        # concurrency - 1 of them, within moments); nothing new starts before Retry-After ends.
        self.assertLessEqual(len(during_pause), 1, "the throttled mailbox was called before Retry-After ran out")
        self.assertTrue(all(r.at - first_429.at < 0.75 for r in during_pause), during_pause)
        self.assertTrue(any(r.at >= paused_until - 0.01 for r in sends_of(throttled)))
        others_during_pause = [r for m in MAILBOXES[1:] for r in sends_of(m) if first_429.at < r.at < paused_until]
        self.assertTrue(others_during_pause, "other mailboxes stopped while one was throttled")
