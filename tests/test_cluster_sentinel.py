"""
``[redis] sentinels``: the connection asks Redis Sentinel for the master (real redis-server and
redis-server --sentinel on loopback), and cluster admission works through it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from gateway.cluster.admission import ClusterAdmission, ClusterSlot
from gateway.config.cluster import ClusterConfig
from gateway.config.policy import RedisConfig
from gateway.policy.redis_connection import RedisConnection
from gateway.testing.policy import start_redis_server
from gateway.testing.ports import ports_for
from tests.tools import require_tool


class _Sentinel(ProcessProtocol):
    def __init__(self) -> None:
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"+monitor master" in self.output:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        # Ended first: whoever the failed start makes stop the server must see it gone.
        self.ended.callback(None)
        if not self.ready.called:
            self.ready.errback(RuntimeError("redis sentinel exited: " + self.output.decode("utf-8", "replace")[-500:]))


class SentinelTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def _start_sentinel(self, executable, directory, master_port, port):
        conf = os.path.join(directory, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(f"port {port}\nbind 127.0.0.1\nsentinel monitor gw {'127.0.0.1'} {master_port} 1\n")
        sentinel = _Sentinel()
        process = reactor.spawnProcess(sentinel, executable, [executable, conf, "--sentinel"], env={}, path=directory)

        def stop():
            if not sentinel.ended.called:
                process.signalProcess("TERM")
            return sentinel.ended

        self.addCleanup(stop)
        yield sentinel.ready.addTimeout(30, reactor)

    @inlineCallbacks
    def test_admission_through_sentinel(self):
        executable = require_tool(self, "redis-server", "redis-server")
        directory = tempfile.mkdtemp(prefix="gss", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        ports = ports_for(self)
        master_port, sentinel_port = ports.port(), ports.port()
        master = yield start_redis_server(reactor, directory, master_port, ())
        self.addCleanup(master.stop)
        yield self._start_sentinel(executable, directory, master_port, sentinel_port)
        config = RedisConfig(sentinels=(("127.0.0.1", sentinel_port),), sentinel_master="gw",
                             connect_timeout=2.0, reply_timeout=2.0, key_prefix="t")
        self.assertIn("sentinel master gw via 127.0.0.1:", config.describe())
        connection = RedisConnection(config, reactor)
        connection.startService()
        self.addCleanup(connection.stopService)
        admission = ClusterAdmission(connection, ClusterConfig(name="c", node_id="a"), reactor, concurrency=1,
                                     max_hold=0.0)
        slot = yield admission.admit((("t",), "m@example.com"), "Q1")
        self.assertIsInstance(slot, ClusterSlot)
        # The lease is in the master's keyspace (asked directly, not through the sentinel).
        direct = RedisConnection(RedisConfig(unix_socket=master.socket_path, key_prefix="t"), reactor)
        direct.startService()
        self.addCleanup(direct.stopService)
        leases = yield direct.call(lambda r: r.zcard(admission._keys((("t",), "m@example.com"))[0]))
        self.assertEqual(int(leases), 1)
        slot.release()
