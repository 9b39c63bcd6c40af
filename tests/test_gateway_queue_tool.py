"""
graphsmtp-queue against the real running gateway (issue 12 item 4): hold, flush and release
as subprocesses while the daemon owns the spool — a held message is not attempted by a flush,
a released one is delivered by the next flush, and the tool never touches the daemon's queue.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.delivery.interfaces import Delivered, Transient
from gateway.testing.harness import send_message, start_gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FirstAttemptDefers:
    """Defers each message's first attempt, delivers later ones."""

    def __init__(self):
        self.calls = []

    def deliver(self, entry):
        self.calls.append(entry.queue_id)
        if self.calls.count(entry.queue_id) == 1:
            return succeed(Transient("Graph 503 Service Unavailable"))
        return succeed(Delivered())


class Applied:
    """Wraps a spool method so the test can wait until the daemon has applied a request."""

    def __init__(self, spool, name):
        self.waiting: list[tuple[str, Deferred]] = []
        original = getattr(spool, name)

        def wrapped(queue_id):
            return original(queue_id).addCallback(self._done, queue_id)
        setattr(spool, name, wrapped)

    def _done(self, result, queue_id):
        for wanted, d in list(self.waiting):
            if wanted == queue_id:
                self.waiting.remove((wanted, d))
                d.callback(result)
        return result

    def wait(self, queue_id) -> Deferred:
        d: Deferred = Deferred()
        self.waiting.append((queue_id, d))
        return d


class RunningDaemonQueueToolTests(TestCase):
    timeout = 60

    def tool(self, spool, *args):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("GRAPHSMTP_CONFIG", None)
        return getProcessOutputAndValue(sys.executable, ["-m", "gateway.cli.queue", "--spool", spool, *args],
                                        env=env, path=ROOT, reactor=reactor)

    @inlineCallbacks
    def test_hold_flush_release_while_running(self):
        deliverer = FirstAttemptDefers()
        applied = {}

        def prepare(components):
            applied["hold"] = Applied(components.spool, "hold")
            applied["release"] = Applied(components.spool, "release")

        gw = yield start_gateway(self, {"queue": {"retry_schedule": ["1h"], "jitter": 0}},
                                 deliverer=deliverer, prepare=prepare)
        spool = gw.config.spool.directory
        for subject in (b"held", b"flushed"):
            yield send_message(gw.port(), "app@corp.example", ["ops@corp.example"], b"Subject: " + subject + b"\r\n\r\nx\r\n")
        deferred = yield gw.outcomes(2, ("deferred",))
        held_id, flushed_id = [entry.queue_id for _, entry, _ in deferred]

        held = applied["hold"].wait(held_id)
        out, err, code = yield self.tool(spool, "hold", held_id)
        self.assertEqual(code, 0, err)
        self.assertIn(b"the running daemon picked up: hold " + held_id.encode(), out)
        yield held

        out, err, code = yield self.tool(spool, "list", "--json")
        self.assertEqual(code, 0, err)
        states = {m["queue_id"]: m["state"] for m in json.loads(out)["messages"]}
        self.assertEqual(states, {held_id: "held", flushed_id: "queued"})

        out, err, code = yield self.tool(spool, "flush")
        self.assertEqual(code, 0, err)
        [entry] = yield gw.delivered(1)
        self.assertEqual(entry.queue_id, flushed_id)
        self.assertEqual(deliverer.calls.count(held_id), 1)  # the flush did not attempt the held one

        released = applied["release"].wait(held_id)
        out, err, code = yield self.tool(spool, "release", "--all")
        self.assertEqual(code, 0, err)
        entry = yield released
        self.assertEqual(entry.attempts, 1)
        out, err, code = yield self.tool(spool, "flush")
        self.assertEqual(code, 0, err)
        delivered = yield gw.delivered(2)
        self.assertEqual(delivered[1].queue_id, held_id)
        self.assertEqual(deliverer.calls.count(held_id), 2)
