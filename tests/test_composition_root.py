"""
The composition root (gateway.service.makeService, the builders in gateway.wiring): each
builder returns its part, nothing is set on an object after it is built, the status endpoint
reads an IHealthSource, and the configuration's sections are typed fields.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.config.auth import AuthConfig
from gateway.config.local import LocalConfig
from gateway.config.status import StatusConfig
from gateway.delivery.capture import CaptureDeliverer
from gateway.delivery.graph.factory import GraphDelivery, build_graph_delivery
from gateway.delivery.graph.tenant_health import TenantHealthMonitor
from gateway.queue.runner import QueueRunner
from gateway.service import GatewayOptions, GatewayService, makeService
from gateway.spool.store import DirectorySpool
from gateway.status.health import DeliveryHealth
from gateway.status.interfaces import IHealthSource
from gateway.status.web import snapshot
from gateway.testing.harness import gateway_config
from gateway.threads import ThreadPoolService
from gateway.wiring import build_queue, build_spool

GRAPH = {"tenant_id": "00000000-0000-0000-0000-000000000001", "client_id": "00000000-0000-0000-0000-000000000002",
         "client_secret": "not-a-real-secret"}


class _Journal:
    """Stands in for the spool's draft journal: only its identity matters here."""


class MakeServiceTests(SynchronousTestCase):
    def build(self, data=None, **options):
        config = gateway_config(self, data)
        service = makeService(GatewayOptions(config, install_signal_handlers=False, **options), Clock())
        self.addCleanup(service.components.plugin_search.undo)
        return service

    def test_children_start_pools_first_and_listeners_last(self):
        service = self.build({"status": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        self.assertIsInstance(service, GatewayService)
        children = list(service)
        [spool_pool] = [s for s in children if getattr(s, "name", None) == "graphsmtp-spool"]
        self.assertIs(children[0], spool_pool)  # every fsync has its pool before anyone writes
        listeners = [part.service for part in service.components.listeners]
        self.assertEqual(children[-len(listeners):], listeners)
        runner = service.components.runner
        self.assertLess(children.index(runner), children.index(service.status))
        self.assertLess(children.index(service.status), children.index(listeners[0]))

    def test_the_spool_judges_drop_offs_with_the_local_chain_the_listener_builder_returns(self):
        import os

        from gateway.smtp.local import DropOffJudge

        socket = os.path.join(os.path.abspath(self.mktemp()), "submit.sock")
        service = self.build({"local": {"socket": socket}}, listen=False)
        judge = service.components.spool.import_judge
        self.assertIsInstance(judge, DropOffJudge)
        self.assertIs(judge.local, service.config.local)
        self.assertIsNone(self.build(listen=False).components.spool.import_judge)  # no [local]: unjudged

    def test_the_parts_are_the_ones_the_runner_and_listeners_share(self):
        service = self.build()
        components = service.components
        self.assertIsInstance(components.spool, DirectorySpool)
        self.assertIsInstance(components.deliverer, CaptureDeliverer)
        self.assertIsInstance(components.runner, QueueRunner)
        self.assertIs(components.runner.spool, components.spool)
        self.assertIs(components.runner.deliverer, components.deliverer)
        self.assertIs(components.listeners[0].factory.spool, components.spool)
        self.assertIn(components.recent, components.runner.observers)

    def test_a_given_deliverer_replaces_the_configured_one(self):
        deliverer = object()
        service = self.build(deliverer=deliverer)
        self.assertIs(service.components.deliverer, deliverer)
        self.assertIs(service.components.runner.deliverer, deliverer)
        self.assertEqual(service.components.health.tenants(), ())

    def test_checking_builds_no_listening_service_and_no_status_endpoint(self):
        service = self.build({"status": {"endpoint": "tcp:0:interface=127.0.0.1"}}, listen=False)
        self.assertEqual([part.service for part in service.components.listeners], [None])
        self.assertIsNone(service.status)
        self.assertFalse(any(part.service in list(service) for part in service.components.listeners))

    def test_capture_health_is_an_empty_health_source(self):
        service = self.build()
        health = service.components.health
        self.assertTrue(verifyObject(IHealthSource, health))
        self.assertEqual((health.tenants(), health.cluster(), health.pause_reason("k")), ((), None, ""))
        state = snapshot(service.components, Clock())  # not started: the listener is down, nothing else
        self.assertEqual((state["status"], state["delivery"]["tenants"], state["cluster"]), ("degraded", [], None))
        self.assertEqual(state["delivery"]["deliverer"], "CaptureDeliverer")

    def test_graph_health_reads_the_tenant_monitor(self):
        service = self.build({"graph": dict(GRAPH)})
        health = service.components.health
        self.assertTrue(verifyObject(IHealthSource, health))
        [monitor] = [s for s in service if isinstance(s, TenantHealthMonitor)]
        self.assertEqual([t.label for t in health.tenants()], [t.label for t in monitor.health()])
        self.assertEqual([t.state for t in health.tenants()], ["unknown"])  # before the first probe
        self.assertIsNone(health.cluster())


class BuilderTests(SynchronousTestCase):
    def test_spool_builder_returns_the_spool_and_its_pool(self):
        config = gateway_config(self)
        parts = build_spool(config, Clock())
        self.assertIsInstance(parts.pool, ThreadPoolService)
        self.assertIs(parts.spool._pool, parts.pool.pool)
        self.assertEqual(parts.spool.disk.node, "gateway.test")  # no [cluster]: the host name

    def test_queue_builder_returns_the_runner_and_the_incoming_watcher(self):
        from gateway.wiring import Observers

        config = gateway_config(self)
        spool = build_spool(config, Clock()).spool
        observers = Observers((), ("seen",), object(), object())
        queue = build_queue(config, Clock(), spool, object(), observers)
        self.assertIs(queue.services[0], queue.runner)
        self.assertEqual(len(queue.services), 2)
        self.assertEqual(list(queue.runner.observers), ["seen"])


class GraphDeliveryTests(SynchronousTestCase):
    def build(self, **graph):
        config = gateway_config(self, {"graph": {**GRAPH, **graph}}).graph
        journal = _Journal()
        return build_graph_delivery(config, Clock(), journal=journal), journal

    def test_everything_is_a_constructor_argument(self):
        delivery, journal = self.build()
        self.assertIsInstance(delivery, GraphDelivery)
        self.assertIs(delivery.deliverer.journal, journal)
        # Nothing is hung on the deliverer after it is built (token_providers was written, never read).
        self.assertFalse(hasattr(delivery.deliverer, "token_providers"))
        self.assertFalse(hasattr(delivery.deliverer, "tenant_monitor"))
        self.assertIs(delivery.services[-1], delivery.tenant_monitor)
        self.assertEqual([getattr(s, "name", None) for s in delivery.services[:2]],
                         ["graphsmtp-msal", "graphsmtp-graph-io"])
        self.assertEqual(delivery.observers, ())

    def test_monitor_reads_the_deliverers_own_tenant_view(self):
        delivery, _ = self.build()
        self.assertEqual([t.label for t in delivery.tenant_monitor.health()],
                         [t.label for t in delivery.deliverer.health()])

    def test_dsn_observer_is_returned_not_attached(self):
        delivery, _ = self.build(dsn=True, postmaster="postmaster@corp.example")
        [dsn] = delivery.observers
        self.assertEqual(type(dsn).__name__, "DSNObserver")


class HealthSourceTests(SynchronousTestCase):
    def test_views_are_what_it_answers(self):
        health = DeliveryHealth(lambda: ["t"], lambda: {"state": "ok"}, lambda key: f"paused {key}")
        self.assertTrue(verifyObject(IHealthSource, health))
        self.assertEqual((health.tenants(), health.cluster(), health.pause_reason("m")),
                         (("t",), {"state": "ok"}, "paused m"))


class TypedSectionsTests(SynchronousTestCase):
    def test_sections_are_typed_fields(self):
        config = gateway_config(self, {"status": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        self.assertIsInstance(config.auth, AuthConfig)
        self.assertIsInstance(config.status, StatusConfig)
        self.assertIsInstance(config.local, LocalConfig)
        self.assertEqual(config.status.endpoint, "tcp:0:interface=127.0.0.1")
        self.assertIsNone(config.redis)
        self.assertIsNone(config.cluster)
        self.assertEqual(config.observers, ())
