"""
The builders the composition root (L{gateway.service.makeService}) calls, one per part of a
gateway.  Each takes what it needs as arguments and *returns* its part with the services that
part needs running: nothing is set on an object after it is built, and nothing is looked up.

Construction does everything that can fail on a bad configuration — reading certificates,
building policies, opening the users file — so a mistake stops start-up with one line before
any port is bound.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence

import attrs
from twisted.application.service import IService

from gateway.config import ConfigError, GatewayConfig
from gateway.config.model import ListenerConfig
from gateway.policy.chain import PolicyChain
from gateway.status.worker_intake import WorkerIntake

if TYPE_CHECKING:
    from gateway.auth.build import Authentication
    from gateway.delivery.interfaces import IDeliverer
    from gateway.plugins.search import PluginSearchPath
    from gateway.policy.redis_connection import RedisConnection
    from gateway.queue.runner import QueueRunner
    from gateway.smtp.factory import GatewaySMTPFactory
    from gateway.smtp.local import DropOffJudge
    from gateway.smtp.tls import TLSContextSource
    from gateway.spool.commit_process import CommitProcess
    from gateway.spool.store import DirectorySpool
    from gateway.status.interfaces import IHealthSource
    from gateway.status.metrics import GatewayMetrics
    from gateway.status.recent import RecentDeliveries
    from gateway.status.web import StatusServices
    from gateway.threads import ThreadPoolService


@attrs.define
class ListenerParts:
    """One SMTP listener: its configuration, protocol factory, listening service, TLS source."""

    config: ListenerConfig
    factory: "GatewaySMTPFactory"
    service: Any
    tls: Optional["TLSContextSource"] = None


@attrs.frozen
class Plugins:
    """What ``[gateway] plugin_paths`` added to the plugin search path, and the modules that broke."""

    search: "PluginSearchPath"
    broken: Mapping[str, str]

    @contextmanager
    def undone_on_error(self) -> Iterator[None]:
        """A configuration that does not build leaves no trace in this process."""
        try:
            yield
        except BaseException:
            self.search.undo()
            raise


@attrs.frozen
class SpoolParts:
    """
    The spool, the thread pool its fsyncs run in and the process its intake commits run in
    (started first, stopped last; the process before the pool).
    """

    spool: "DirectorySpool"
    pool: "ThreadPoolService"
    commits: Optional["CommitProcess"] = None

    @property
    def services(self) -> list[Any]:
        """In start order."""
        return [self.pool] + ([self.commits] if self.commits is not None else [])


@attrs.frozen
class Delivery:
    """
    The deliverer, the services it needs running, the delivery observers it brings (Graph's
    DSN sender) and its health as the status endpoint reads it.
    """

    deliverer: "IDeliverer"
    services: tuple[IService, ...]
    observers: tuple[Any, ...]
    health: "IHealthSource"


@attrs.frozen
class Observers:
    """
    Everyone told about delivery outcomes.  ``configured`` are the ``[[observer]]`` ones (SIGHUP
    rebuilds those); ``all`` adds the deliverer's and the status page's; ``service`` opens and
    closes them.
    """

    configured: tuple[Any, ...]
    all: tuple[Any, ...]
    service: IService
    recent: "RecentDeliveries"


@attrs.frozen
class Queue:
    """The queue runner and the watcher that kicks it when sendmail drops a message off."""

    runner: "QueueRunner"
    services: tuple[IService, ...]


@attrs.frozen
class Listeners:
    """
    Every SMTP listener (``[local]``'s socket last) and the pool header sections are judged in;
    ``import_judge`` is the ``[local]`` chain's judge of sendmail drop-offs (None without
    ``[local]``), for the spool's L{DirectorySpool.judge_imports_with}.
    """

    parts: tuple[ListenerParts, ...]
    services: tuple[IService, ...]
    import_judge: Optional[Callable[..., Any]] = None


@attrs.define
class Components:
    """
    What a running gateway is made of.  ``services`` must start in order (thread pools and
    connections first, then the queue runner) and stop in reverse; ``listeners`` start once the
    rest is up and stop first, so nothing is accepted that could not be stored.  SIGHUP
    (L{gateway.reload}) swaps ``auth``, ``configured_observers`` and ``observers``.
    """

    spool: "DirectorySpool"
    deliverer: "IDeliverer"
    runner: "QueueRunner"
    listeners: list[ListenerParts]
    services: list[IService]
    auth: "Authentication"
    observers: list[Any]
    metrics: "GatewayMetrics"
    recent: "RecentDeliveries"
    health: "IHealthSource"
    configured_observers: list[Any]
    redis: Optional["RedisConnection"]
    plugin_search: "PluginSearchPath"
    broken_plugins: Mapping[str, str]
    #: With ``[gateway] workers``: what the intake workers last reported (status page, /metrics).
    worker_intake: WorkerIntake = attrs.field(factory=WorkerIntake)


def load_plugins(config: GatewayConfig) -> Plugins:
    """
    Plugin directories first: every plugin lookup must see them.  Broken plugin modules are
    reported now, whether or not a listener names what they provide.
    """
    from twisted.logger import Logger

    from gateway.plugins.search import add_plugin_paths, broken_plugin_modules

    search = add_plugin_paths(config.plugin_paths)
    try:
        broken = broken_plugin_modules()
    except BaseException:
        search.undo()
        raise
    for module, error in sorted(broken.items()):
        Logger().error("plugin module {module} failed to import: {error}", module=module, error=error)
    return Plugins(search, broken)


def build_spool(config: GatewayConfig, reactor: Any) -> SpoolParts:
    from gateway.spool.fileops import FileOps
    from gateway.spool.store import DirectorySpool
    from gateway.threads import ThreadPoolService

    pool = ThreadPoolService("graphsmtp-spool", 1, config.spool.threads)
    fileops = FileOps() if config.spool.flush == "auto" else FileOps().flush_per_file()
    spool = DirectorySpool(config.spool.directory, pool.pool, reactor, archive_delivered=config.spool.archive_delivered,
                           fileops=fileops, hold_new=config.queue.hold_new,
                           node=config.cluster.node_id if config.cluster is not None else config.hostname)
    commits = (spool.commit_in_process(flush_per_file=config.spool.flush == "fdatasync", journal=config.spool.journal)
               if config.spool.committer == "process" else None)
    return SpoolParts(spool, pool, commits)


def build_delivery(config: GatewayConfig, reactor: Any, spool: SpoolParts, auth: "Authentication",
                   metrics: "GatewayMetrics", redis: Optional["RedisConnection"]) -> Delivery:
    """Graph when ``[graph]`` is configured (and not overridden), else the capture outbox."""
    from gateway.status.health import DeliveryHealth

    if config.deliverer != "graph":
        from gateway.delivery.capture import CaptureDeliverer

        return Delivery(CaptureDeliverer(config.capture.outbox, spool.pool.pool, reactor), (), (), DeliveryHealth())
    from gateway.delivery.graph.credentials import ConfigCredentialResolver, credentials_from_config
    from gateway.delivery.graph.factory import build_graph_delivery
    from gateway.status.health import throttle_pause_reason

    resolver = auth.credential_resolver(ConfigCredentialResolver(credentials_from_config(config.graph)))
    admission = _cluster_admission(config, reactor, redis)
    # The deliverer records Graph draft ids and quarantines changed messages through the
    # spool's IDraftJournal / IEntryQuarantine, without importing it.
    graph = build_graph_delivery(config.graph, reactor, resolver, on_request=metrics.graph_request,
                                 connections=config.queue.concurrency, admission=admission, journal=spool.spool)
    health = DeliveryHealth(graph.tenant_monitor.health, admission.status if admission is not None else None,
                            throttle_pause_reason(graph.deliverer.throttles))
    services = ((admission,) if admission is not None else ()) + graph.services
    return Delivery(graph.deliverer, services, graph.observers, health)


def given_delivery(deliverer: "IDeliverer") -> Delivery:
    """A deliverer chosen by the caller (tests deliver into a fake): no services, no health to report."""
    from gateway.status.health import DeliveryHealth

    return Delivery(deliverer, (), (), DeliveryHealth())


def build_observers(config: GatewayConfig, reactor: Any, delivery: Delivery, metrics: "GatewayMetrics") -> Observers:
    from gateway.delivery.observers import ObserversService
    from gateway.delivery.observers import build_observers as configured_observers
    from gateway.status.recent import DeliveryDelayObserver, RecentDeliveries

    configured = tuple(configured_observers(config.observers, reactor, config.hostname))
    # The service opens and closes the configured and the deliverer's observers; the status
    # page's own (recent outcomes, queue delay) need neither.
    service = ObserversService([*configured, *delivery.observers])
    recent = RecentDeliveries(reactor, config.status.recent)
    everyone = (*configured, *delivery.observers, recent, DeliveryDelayObserver(reactor, metrics.delivered_after))
    return Observers(configured, everyone, service, recent)


def build_queue(config: GatewayConfig, reactor: Any, spool: "DirectorySpool", deliverer: "IDeliverer",
                observers: Observers) -> Queue:
    from gateway.queue.runner import QueueRunner
    from gateway.spool.watch import IncomingWatcher

    runner = QueueRunner(spool, deliverer, config.queue, reactor, list(observers.all))
    return Queue(runner, (runner, IncomingWatcher(spool.disk.layout.incoming, runner.kick, reactor)))


def build_listeners(config: GatewayConfig, reactor: Any, spool: "DirectorySpool", auth: "Authentication",
                    redis: Optional["RedisConnection"], metrics: "GatewayMetrics", listen: bool = True) -> Listeners:
    """
    One SMTP listener per ``[[listener]]``, then the ``[local]`` socket.  ``listen=False``
    (graphsmtp-config check) builds no listening service: endpoints are only validated, so a
    ``systemd:`` listener can be checked outside systemd.
    """
    from gateway.policy.registry import build_listener_chains
    from gateway.smtp.factory import GatewaySMTPFactory
    from gateway.smtp.tls import TLSContextSource
    from gateway.threads import ThreadPoolService

    chains = build_listener_chains(config, reactor, redis)
    # Header sections are judged off the reactor thread, in a pool of their own: the reactor's
    # default pool may be busy with (or full of) other work, and judging must never wait on it.
    mail_pool = ThreadPoolService("graphsmtp-mail", 1, 2)
    send_as = _send_as(config)
    parts = []
    for listener in capped_listeners(config):
        tls = TLSContextSource(listener) if listener.tls != "none" else None
        chain = counting_chain(listener, chains[listener.name].policies, auth.relay_policy(listener), metrics)
        factory = GatewaySMTPFactory(
            listener, config.hostname, spool, chain, reactor,
            portal=auth.portal_for(listener), tls=tls,
            add_message_id=config.add_message_id, add_date=config.add_date,
            intake=metrics.intake_for(listener.name), send_as=send_as, judge_pool=mail_pool.pool,
        )
        service = _listening_service(reactor, listener, factory) if listen else None
        parts.append(ListenerParts(listener, factory, service, tls))
    local = _local_submission(config, reactor, spool, auth, redis, listen, metrics, mail_pool.pool)
    if local is None:
        return Listeners(tuple(parts), (mail_pool,))
    local_part, import_judge = local
    return Listeners((*parts, local_part), (mail_pool,), import_judge)


def _send_as(config: GatewayConfig) -> str:
    """The sending-mailbox rule, applied at intake and its result recorded with each message."""
    return config.graph.send_as if config.graph is not None else "header-from"


def _listening_service(reactor: Any, listener: ListenerConfig, factory: Any) -> Any:
    """
    The listener's service; an endpoint that cannot even be set up (a ``systemd:`` socket the
    unit did not pass) is one configuration error naming the listener, not a traceback.
    """
    from gateway.smtp.listener import listener_service

    try:
        return listener_service(reactor, listener, factory)
    except KeyError as e:
        raise ConfigError(f"listener.{listener.name}.endpoint",
                          f"{listener.endpoint!r}: systemd passed no socket named {e.args[0]!r} "
                          "(start graphsmtp through its .socket unit, or use a tcp: endpoint)") from None
    except (IndexError, ValueError) as e:
        raise ConfigError(f"listener.{listener.name}.endpoint", f"{listener.endpoint!r}: {e}") from None


def counting_chain(listener: ListenerConfig, policies: Sequence[Any], guard: Any,
                   metrics: "GatewayMetrics") -> PolicyChain:
    """The listener's chain with every policy (and the relay guard) counting its refusals."""
    from gateway.status.policy_counts import CountingPolicy

    def count(name: str, code: Any) -> None:
        metrics.policy_refused(listener.name, name, code)

    names = [ref.use for ref in listener.policies]
    wrapped = tuple(CountingPolicy(p, names[i] if i < len(names) else f"policy-{i}", count)
                    for i, p in enumerate(policies))
    return PolicyChain(wrapped, guard=CountingPolicy(guard, "relay-access", count) if guard is not None else None)


def local_chain(config: GatewayConfig, reactor: Any, redis: Any, auth: "Authentication",
                metrics: "GatewayMetrics") -> tuple[ListenerConfig, PolicyChain]:
    """The ``[local]`` socket as a listener, and its chain (counted on /metrics as listener="sendmail")."""
    from gateway.policy.context import PolicyContext
    from gateway.policy.registry import build_chain

    [listener] = capped_listeners(attrs.evolve(config, listeners=(config.local.listener(),)))
    context = PolicyContext(clock=reactor, listener=listener.name, redis=redis, hostname=config.hostname,
                            limits=listener.limits)
    policies = build_chain(config.local.policies, context).policies
    return listener, counting_chain(listener, policies, auth.relay_policy(listener), metrics)


def _local_submission(config: GatewayConfig, reactor: Any, spool: "DirectorySpool", auth: "Authentication",
                      redis: Any, listen: bool, metrics: "GatewayMetrics",
                      judge_pool: Any) -> Optional[tuple[ListenerParts, "DropOffJudge"]]:
    """
    The ``[local]`` UNIX socket for graphsmtp-sendmail (None when not configured): an SMTP
    listener whose sessions are logged in by the kernel's peer credentials, guarded by the
    same relay policy and running the ``[local]`` chain, which also judges sendmail's drop-offs
    (the judge returned beside the listener).
    """
    if not config.local.socket:
        return None
    from gateway.smtp.local import DropOffJudge, LocalSubmissionFactory

    listener, chain = local_chain(config, reactor, redis, auth, metrics)
    factory = LocalSubmissionFactory(config.local, config.hostname, spool, chain, reactor, listener=listener,
                                     add_message_id=config.add_message_id, add_date=config.add_date,
                                     intake=metrics.intake_for(listener.name), send_as=_send_as(config),
                                     judge_pool=judge_pool)
    part = ListenerParts(listener, factory, _listening_service(reactor, listener, factory) if listen else None)
    return part, DropOffJudge(chain, config.local)


def _cluster_admission(config: GatewayConfig, reactor: Any, redis: Any) -> Any:
    """
    With ``[cluster]``: the mailbox admission every gateway of the cluster shares through Redis
    (a service: it renews leases); without: None (the runner's queues pace alone).
    """
    if config.cluster is None or redis is None:
        return None
    from gateway.cluster.admission import ClusterAdmission

    graph = config.graph
    return ClusterAdmission(redis, config.cluster, reactor, concurrency=graph.mailbox_concurrency,
                            rate=graph.mailbox_rate, burst=graph.mailbox_burst, max_hold=graph.max_hold)


def capped_listeners(config: GatewayConfig) -> list[ListenerConfig]:
    """
    Listeners with SIZE no larger than what the deliverer can carry, so clients learn the real
    limit at EHLO instead of being bounced after the gateway accepted the message.
    """
    if config.deliverer != "graph":
        return list(config.listeners)
    from gateway.delivery.graph.sizes import max_message_size

    cap = max_message_size(config.graph)
    return [
        attrs.evolve(listener, limits=attrs.evolve(listener.limits,
                                                   max_message_size=min(listener.limits.max_message_size, cap)))
        for listener in config.listeners
    ]


def build_status(config: GatewayConfig, components: Components, reactor: Any) -> Optional["StatusServices"]:
    """
    The ``[status]`` endpoint's web service and thread pool (L{gateway.status.web.StatusServices}),
    reading the running components; None without ``[status] endpoint``.
    """
    if not config.status.endpoint:
        return None
    from gateway.status.web import status_service

    return status_service(config.status, components, reactor, config.hostname)


#: How often certificate files are checked for renewal (certbot, ACME clients), in seconds.
CERTIFICATE_CHECK_INTERVAL = 60.0


def certificate_watch(components: Components, reactor: Any) -> Optional[IService]:
    """A timer picking up renewed certificate files without a signal; None when no listener has TLS."""
    if all(part.tls is None for part in components.listeners):
        return None
    from twisted.application.internet import TimerService

    watch = TimerService(CERTIFICATE_CHECK_INTERVAL, check_certificates, components)
    watch.clock = reactor
    return watch


def check_certificates(components: Components) -> None:
    """Re-read each TLS listener's certificate files when they changed on disk."""
    from twisted.logger import Logger

    for part in components.listeners:
        if part.tls is None:
            continue
        try:
            part.tls.check_for_changes()
        except Exception:
            Logger(namespace="gateway.service.GatewayService").failure(
                "checking certificate files of listener {name} failed", name=part.config.name)


__all__ = [
    "Components", "ListenerParts", "Plugins", "SpoolParts", "Delivery", "Observers", "Queue", "Listeners",
    "load_plugins", "build_spool", "build_delivery", "given_delivery", "build_observers", "build_queue",
    "build_listeners", "build_status", "certificate_watch", "check_certificates", "capped_listeners", "counting_chain", "local_chain",
]
