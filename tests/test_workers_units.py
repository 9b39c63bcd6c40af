"""
The pieces of ``[gateway] workers`` that need no process: the setting's validation and the
refusal of state that would be split across workers, the commit notices and log records a
worker sends, the clean-up after a worker died, the shared spool lock, and the endpoint a
worker rebuilds around an inherited socket.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.protocols._sni import TLSServerEndpoint
from twisted.trial.unittest import TestCase

from gateway.config import ConfigError
from gateway.config.loader import build_config
from gateway.config.workers import resolve_workers
from gateway.smtp.proxy import TrustedProxyEndpoint
from gateway.spool.disk import SpoolDisk
from gateway.spool.interfaces import SpoolError
from gateway.spool.queueid import new_queue_id
from gateway.status.metrics import GatewayMetrics
from gateway.status.worker_intake import WorkerIntake
from gateway.workers.channel import FIRST_LISTENER_FD, LOCK_FD, NOTIFY_FD, LineSplitter, queue_id_of
from gateway.workers.sockets import AdoptedStreamEndpoint, adopted_endpoint
from gateway.workers.spool_sweep import minted_at, remove_temp_files, unannounced_since
from gateway.workers.supervisor import WorkerProcess, WorkerSupervisor, with_workers

LISTENER = {"name": "mx", "endpoint": "tcp:0:interface=127.0.0.1", "trusted_networks": ["127.0.0.0/8"]}


def config(workers=None, **listener):
    data = {"listener": [{**LISTENER, **listener}]}
    if workers is not None:
        data["gateway"] = {"workers": workers}
    return build_config(data, {}, {}, "/nonexistent")


class WorkersSettingTests(TestCase):
    def error(self, value) -> str:
        with self.assertRaises(ConfigError) as caught:
            config(value)
        return str(caught.exception)

    def test_default_is_one_process(self):
        workers = config().workers
        self.assertEqual((workers.count, workers.enabled), (1, False))

    def test_zero_and_too_many_name_the_range(self):
        self.assertEqual(self.error(0), "gateway.workers: must be from 1 to 64 (1 = a single process, no workers), not 0")
        self.assertEqual(self.error(65), "gateway.workers: must be from 1 to 64 (1 = a single process, no workers), not 65")

    def test_non_integers_are_refused_with_the_value(self):
        for value, shown in (("two", "'two'"), (2.5, "2.5"), (True, "True"), ([2], "[2]")):
            self.assertEqual(self.error(value),
                             f"gateway.workers: must be a whole number of processes from 1 to 64 or \"auto\", not {shown}")

    def test_auto_is_one_worker_per_cpu(self):
        self.assertEqual(resolve_workers("auto", (), cpu_count=lambda: 4).count, 4)
        self.assertEqual(resolve_workers("auto", (), cpu_count=lambda: None).count, 1)

    def test_explicit_workers_with_in_memory_rate_limits_are_refused(self):
        with self.assertRaises(ConfigError) as caught:
            config(2, policies=[{"use": "rate-limit", "messages": 10, "window": "1m"}])
        text = str(caught.exception)
        self.assertIn("gateway.workers: is 2, but listener mx has a rate-limit policy with the in-memory backend", text)
        self.assertIn("backend = \"redis\"", text)

    def test_auto_with_in_memory_rate_limits_falls_back_to_one_process_and_says_why(self):
        built = config(policies=[{"use": "rate-limit", "messages": 10, "window": "1m"}])
        workers = resolve_workers("auto", built.listeners, cpu_count=lambda: 8)
        self.assertEqual(workers.count, 1)
        self.assertIn("listener mx has a rate-limit policy with the in-memory backend", workers.fallback)

    def test_one_process_keeps_the_gateway_service_itself(self):
        service = object()
        self.assertIs(with_workers(service, config(1), None, {}), service)


class ChannelTests(TestCase):
    def test_records_come_out_whole_across_reads(self):
        seen = []
        splitter = LineSplitter(seen.append)
        splitter.feed(b"1K1EJ")
        splitter.feed(b"M9D8ZEEWPZPDBE\n1K1EJMZGQJRPX")
        self.assertEqual(seen, [b"1K1EJM9D8ZEEWPZPDBE"])
        self.assertEqual(splitter.rest(), b"1K1EJMZGQJRPX")

    def test_only_queue_ids_are_announced(self):
        self.assertEqual(queue_id_of(b"1K1EJM9D8ZEEWPZPDBE"), "1K1EJM9D8ZEEWPZPDBE")
        self.assertIsNone(queue_id_of(b"../../etc/passwd"))
        self.assertIsNone(queue_id_of(b"1K1EJM9D8ZEEWPZPDB"))


class SweepTests(TestCase):
    def test_minted_at_reads_the_time_in_a_queue_id(self):
        self.assertAlmostEqual(minted_at(new_queue_id(1796003531.25)), 1796003531.25, places=5)

    def test_records_of_the_worker_never_announced_are_found(self):
        queue = self.mktemp()
        os.makedirs(queue)
        old, announced, lost = (new_queue_id(t) for t in (1000.0, 2000.0, 2001.0))
        for queue_id in (old, announced, lost):
            for suffix in (".msg", ".env"):
                open(os.path.join(queue, queue_id + suffix), "w").close()
        open(os.path.join(queue, new_queue_id(2002.0) + ".msg"), "w").close()  # no record: incomplete
        self.assertEqual(unannounced_since(queue, 1500.0, {announced}), [lost])

    def test_only_the_dead_workers_temp_files_are_removed(self):
        tmp = self.mktemp()
        os.makedirs(tmp)
        for name in ("dead01.A.msg", "dead01.A.env", "alive2.B.msg"):
            open(os.path.join(tmp, name), "w").close()
        self.assertEqual(remove_temp_files(tmp, "dead01").removed, 2)
        self.assertEqual(os.listdir(tmp), ["alive2.B.msg"])


class SharedLockTests(TestCase):
    def test_a_worker_holds_the_lock_through_the_inherited_descriptor(self):
        root = self.mktemp()
        main = SpoolDisk(root)
        main.ensure_directories()
        main.acquire_lock()
        self.addCleanup(main.release_lock)
        worker = SpoolDisk(root)
        worker.share_lock(os.dup(main.lock_descriptor))
        self.addCleanup(worker.release_lock)
        worker.acquire_lock()  # already held: returns at once instead of waiting for SpoolBusy
        self.assertIsNotNone(worker.lock_descriptor)

    def test_a_descriptor_of_another_file_is_refused(self):
        root = self.mktemp()
        disk = SpoolDisk(root)
        disk.ensure_directories()
        open(disk.layout.lock, "w").close()
        fd = os.open(os.path.join(root, "tmp"), os.O_RDONLY)
        self.addCleanup(os.close, fd)
        self.assertRaises(SpoolError, disk.share_lock, fd)


class AdoptedEndpointTests(TestCase):
    def listener(self, **options):
        return config(**options).listeners[0]

    def test_plain_listener_adopts_the_descriptor(self):
        endpoint = adopted_endpoint(reactor, self.listener(), 7, None)
        self.assertIsInstance(endpoint, AdoptedStreamEndpoint)

    def test_proxy_header_is_parsed_before_implicit_tls(self):
        listener = self.listener(endpoint="haproxy:tcp:0:interface=127.0.0.1", tls="implicit",
                                 proxy_trusted_networks=["127.0.0.1/32"], tls_cert="c", tls_key="k")
        endpoint = adopted_endpoint(reactor, listener, 7, object())
        self.assertIsInstance(endpoint, TLSServerEndpoint)  # TLS, outermost as an endpoint...
        self.assertIsInstance(endpoint.endpoint, TrustedProxyEndpoint)  # ...so inside the PROXY parser
        self.assertIsInstance(endpoint.endpoint._inner, AdoptedStreamEndpoint)

    def test_adopting_a_listening_socket_accepts_on_it(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        self.addCleanup(sock.close)
        from twisted.internet.protocol import Factory, Protocol

        d = AdoptedStreamEndpoint(reactor, sock.fileno()).listen(Factory.forProtocol(Protocol))

        def listening(port):
            self.assertEqual(port.getHost().port, sock.getsockname()[1])
            return port.stopListening()

        return d.addCallback(listening)


class _Reactor(Clock):
    """A clock that records spawnProcess calls (the supervisor's only other reactor use here)."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        self.spawned.append((protocol, args, childFDs))
        protocol.transport = None
        return None


class _Gateway(Service):
    def __init__(self, ready):
        built = config()
        self.config = built
        disk = SimpleNamespace(lock_descriptor=9, layout=SimpleNamespace(tmp="/nonexistent", queue="/nonexistent"))
        port = SimpleNamespace(stopReading=lambda: None, fileno=lambda: 11)
        part = SimpleNamespace(config=built.listeners[0], service=SimpleNamespace(port=port))
        self.components = SimpleNamespace(listeners=[part], runner=SimpleNamespace(ready=ready),
                                          spool=SimpleNamespace(disk=disk), worker_intake=WorkerIntake(),
                                          metrics=GatewayMetrics(process=False))


class SupervisorTests(TestCase):
    def start(self):
        self.ready = Deferred()
        self.reactor = _Reactor()
        self.supervisor = WorkerSupervisor(_Gateway(self.ready), 2, "/etc/graphsmtp.toml", {"hostname": "h"},
                                           reactor=self.reactor, install_signal_handlers=False)
        self.supervisor._after_death = lambda worker: None
        self.supervisor.startService()

    def test_workers_start_after_recovery_with_the_sockets_and_the_lock(self):
        self.start()
        self.assertEqual(self.reactor.spawned, [])  # recovery clears tmp/: not while workers write
        self.ready.callback(None)
        self.assertEqual(len(self.reactor.spawned), 2)
        protocol, args, fds = self.reactor.spawned[0]
        self.assertEqual((fds[LOCK_FD], fds[FIRST_LISTENER_FD]), (9, 11))
        self.assertIn(f"mx={FIRST_LISTENER_FD}", args)
        self.assertEqual(args[args.index("--config") + 1], "/etc/graphsmtp.toml")

    def test_a_workers_report_reaches_the_status_and_leaves_with_the_worker(self):
        self.start()
        self.ready.callback(None)
        worker = self.supervisor.workers[0]
        worker.childDataReceived(NOTIFY_FD, b'{"accepted":{},"refused":[],"policy":[],"gauges":{"mx":[2,1]}}\n')
        intake = self.supervisor.gateway.components.worker_intake
        self.assertEqual(intake.sessions("mx"), 2)
        self.supervisor.worker_ended(worker, SimpleNamespace(exitCode=1, signal=None))
        self.assertEqual(intake.sessions("mx"), 0)

    def test_a_dying_worker_is_restarted_with_growing_delays_reset_after_a_stable_run(self):
        self.start()
        self.ready.callback(None)
        delays = []
        for lived in (0.1, 0.1, 0.1, 0.1, 120.0):
            worker = self.supervisor.workers[0]
            self.reactor.advance(lived)
            before = len(self.reactor.spawned)
            self.supervisor.worker_ended(worker, SimpleNamespace(exitCode=1, signal=None))
            waited = 0.0
            while len(self.reactor.spawned) == before:
                self.reactor.advance(0.25)
                waited += 0.25
            delays.append(waited)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 0.5])

    def test_no_restart_while_stopping(self):
        self.start()
        self.ready.callback(None)
        worker = self.supervisor.workers[0]
        self.supervisor._stopping = True
        self.supervisor.worker_ended(worker, SimpleNamespace(exitCode=0, signal=None))
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)


class AfterDeathTests(TestCase):
    @inlineCallbacks
    def test_a_dead_workers_unannounced_commits_are_queued_and_its_temp_files_removed(self):
        root = os.path.abspath(self.mktemp())
        disk = SpoolDisk(root)
        disk.ensure_directories()
        announced = []
        gateway = _Gateway(Deferred())
        gateway.components.spool = SimpleNamespace(
            disk=SimpleNamespace(layout=disk.layout, lock_descriptor=9),
            announce=lambda queue_id: announced.append(queue_id) or succeed(None))
        supervisor = WorkerSupervisor(gateway, 2, None, {}, reactor=reactor, install_signal_handlers=False)
        supervisor.running = 1
        worker = WorkerProcess(supervisor, 0, "deadbeef")
        worker.started_at = worker.sweep_from = 2000.0
        before, told, lost = new_queue_id(1000.0), new_queue_id(2001.0), new_queue_id(2002.0)
        for queue_id in (before, told, lost):
            for suffix in (".msg", ".env"):
                open(os.path.join(disk.layout.queue, queue_id + suffix), "w").close()
        worker.announced.add(told)
        for name in ("deadbeef.X.msg", "cafe.Y.msg"):
            open(os.path.join(disk.layout.tmp, name), "w").close()
        swept = Deferred()
        supervisor.announce = lambda queue_id: (announced.append(queue_id), swept.callback(None))
        supervisor._after_death(worker)
        yield swept
        self.assertEqual(announced, [lost])
        self.assertEqual(os.listdir(disk.layout.tmp), ["cafe.Y.msg"])
