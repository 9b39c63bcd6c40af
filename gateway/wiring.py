"""
Builds the component graph from a configuration.

Kept apart from L{gateway.service} so tests (and L{gateway.testing.harness}) can build exactly
the same graph with a chosen reactor and deliverer.  Construction does everything that can fail
on a bad configuration — reading certificates, building policies, opening the users file — so
a mistake stops start-up with one line before any port is bound.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from gateway.config import ConfigError, GatewayConfig
from gateway.config.model import ListenerConfig
from gateway.policy.chain import PolicyChain


@attrs.define
class ListenerParts:
    """One SMTP listener: its configuration, protocol factory, listening service, TLS source."""

    config: ListenerConfig
    factory: Any
    service: Any
    tls: Any = None


@attrs.define
class Components:
    """
    What a running gateway is made of.  ``services`` must start in order (thread pools and
    connections first, then the queue runner) and stop in reverse; ``listeners`` start once the
    rest is up and stop first, so nothing is accepted that could not be stored.
    """

    spool: Any
    deliverer: Any
    runner: Any
    listeners: list[ListenerParts]
    services: list
    auth: Any = None
    observers: list = attrs.field(factory=list)
    #: L{gateway.status.metrics.GatewayMetrics}: the gateway's own prometheus-client registry.
    metrics: Any = None
    #: L{gateway.status.recent.RecentDeliveries}: the last outcomes, for the status page.
    recent: Any = None
    #: The ``[[observer]]`` ones among ``observers`` (SIGHUP rebuilds these, not the deliverer's).
    configured_observers: list = attrs.field(factory=list)
    #: The running Redis connection policies share (None without ``[redis]``).
    redis: Any = None
    #: What ``[gateway] plugin_paths`` added to the plugin search path (tests undo it).
    plugin_search: Any = None
    #: Plugin modules that do not import: ``{module: error}`` (logged at start-up).
    broken_plugins: Mapping[str, str] = attrs.field(factory=dict)


def build_components(config: GatewayConfig, reactor: Any, deliverer: Any = None, listen: bool = True) -> Components:
    """
    Wire spool → runner → deliverer, AUTH, policies and one SMTP listener per configured
    listener.  ``deliverer`` replaces the configured one (tests deliver into a fake).
    ``listen=False`` (graphsmtp-config check) builds no listening service: endpoints are only
    validated, so a ``systemd:`` listener can be checked outside systemd.
    """
    from twisted.logger import Logger

    from gateway.plugin_search import add_plugin_paths, broken_plugin_modules

    # Plugin directories first: every plugin lookup must see them.  Broken plugin modules are
    # reported now, whether or not a listener names what they provide.
    plugin_search = add_plugin_paths(config.plugin_paths)
    try:
        broken_plugins = broken_plugin_modules()
        for module, error in sorted(broken_plugins.items()):
            Logger().error("plugin module {module} failed to import: {error}", module=module, error=error)
        components = _build_components(config, reactor, deliverer, listen)
    except BaseException:
        plugin_search.undo()  # a configuration that does not build leaves no trace in this process
        raise
    components.plugin_search = plugin_search
    components.broken_plugins = broken_plugins
    return components


def _build_components(config: GatewayConfig, reactor: Any, deliverer: Any, listen: bool) -> Components:
    from gateway.auth.build import build_auth
    from gateway.delivery.observers import ObserversService, build_observers
    from gateway.policy.redis_connection import redis_service
    from gateway.policy.registry import build_listener_chains
    from gateway.smtp.factory import GatewaySMTPFactory
    from gateway.smtp.tls import TLSContextSource
    from gateway.spool.fileops import FileOps
    from gateway.spool.runner import QueueRunner
    from gateway.spool.store import DirectorySpool
    from gateway.spool.watch import IncomingWatcher
    from gateway.status.metrics import GatewayMetrics
    from gateway.status.recent import DeliveryDelayObserver, RecentDeliveries
    from gateway.threads import ThreadPoolService

    # One registry per gateway, made here and handed to whoever counts (never module state).
    metrics = GatewayMetrics()
    recent = RecentDeliveries(reactor, config.status.recent)
    services: list = []
    disk = ThreadPoolService("graphsmtp-spool", 1, config.spool.threads)
    services.append(disk)
    fileops = FileOps() if config.spool.flush == "auto" else FileOps().flush_per_file()
    spool = DirectorySpool(config.spool.directory, disk.pool, reactor, archive_delivered=config.spool.archive_delivered,
                           fileops=fileops,
                           hold_new=config.queue.hold_new)
    spool.disk.node = config.cluster.node_id if config.cluster is not None else config.hostname

    auth = build_auth(config.auth, config.state_dir, reactor=reactor, graph_config=config.graph)
    services.extend(auth.services)

    # Redis starts before the deliverer's services: [cluster] admission shares it.
    redis = redis_service(config, reactor)
    if redis is not None:
        services.append(redis)

    delivery_observers: list = []
    if deliverer is None:
        deliverer, delivery_services, delivery_observers = _build_deliverer(config, reactor, disk, auth, metrics, redis)
        services.extend(delivery_services)
    if hasattr(deliverer, "journal"):
        # The deliverer records Graph draft ids and quarantines changed messages through the
        # spool's IDraftJournal / IEntryQuarantine, without importing it.
        deliverer.journal = spool

    configured_observers = build_observers(config.observers, reactor, config.hostname)
    observers = [*configured_observers, *delivery_observers]
    services.append(ObserversService(observers))
    observers.extend([recent, DeliveryDelayObserver(reactor, metrics.delivered_after)])

    runner = QueueRunner(spool, deliverer, config.queue, reactor, observers)
    services.append(runner)
    services.append(IncomingWatcher(spool.disk.layout.incoming, runner.kick, reactor))

    chains = build_listener_chains(config, reactor, redis)
    # Header sections are judged off the reactor thread, in a pool of their own: the reactor's
    # default pool may be busy with (or full of) other work, and judging must never wait on it.
    mail_pool = ThreadPoolService("graphsmtp-mail", 1, 2)
    services.append(mail_pool)
    # The sending-mailbox rule is applied at intake and its result recorded with each message.
    send_as = config.graph.send_as if config.graph is not None else "header-from"
    listeners = []
    for listener in _capped_listeners(config):
        tls = TLSContextSource(listener) if listener.tls != "none" else None
        chain = _counting_chain(listener, chains[listener.name].policies, auth.relay_policy(listener), metrics)
        factory = GatewaySMTPFactory(
            listener, config.hostname, spool, chain, reactor,
            portal=auth.portal_for(listener), tls=tls,
            add_message_id=config.add_message_id, add_date=config.add_date,
            intake=metrics.intake_for(listener.name), send_as=send_as, judge_pool=mail_pool.pool,
        )
        service = _listening_service(reactor, listener, factory) if listen else None
        listeners.append(ListenerParts(listener, factory, service, tls))
    local = _local_submission(config, reactor, spool, auth, redis, listen, metrics, send_as, mail_pool.pool)
    if local is not None:
        listeners.append(local)
    return Components(spool, deliverer, runner, listeners, services, auth, observers,
                      configured_observers=configured_observers, redis=redis, metrics=metrics, recent=recent)


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


def _counting_chain(listener: ListenerConfig, policies: Any, guard: Any, metrics: Any) -> PolicyChain:
    """The listener's chain with every policy (and the relay guard) counting its refusals."""
    from gateway.status.policy_counts import CountingPolicy

    def count(name: str, code: Any) -> None:
        metrics.policy_refused(listener.name, name, code)

    names = [ref.use for ref in listener.policies]
    wrapped = tuple(CountingPolicy(p, names[i] if i < len(names) else f"policy-{i}", count)
                    for i, p in enumerate(policies))
    return PolicyChain(wrapped, guard=CountingPolicy(guard, "relay-access", count) if guard is not None else None)


def _local_submission(config: GatewayConfig, reactor: Any, spool: Any, auth: Any, redis: Any, listen: bool = True,
                      metrics: Any = None, send_as: str = "header-from", judge_pool: Any = None) -> Any:
    """
    The ``[local]`` UNIX socket for graphsmtp-sendmail (None when not configured): an SMTP
    listener whose sessions are logged in by the kernel's peer credentials, guarded by the
    same relay policy and running the ``[local]`` chain.
    """
    local = config.local
    if not local.socket:
        return None
    from gateway.policy.context import PolicyContext
    from gateway.policy.registry import build_chain
    from gateway.smtp.local import DropOffJudge, LocalSubmissionFactory

    [listener] = _capped_listeners(attrs.evolve(config, listeners=(local.listener(),)))
    context = PolicyContext(clock=reactor, listener=listener.name, redis=redis, hostname=config.hostname,
                            limits=listener.limits)
    policies = build_chain(local.policies, context).policies
    if metrics is not None:  # counted on /metrics like every listener's (listener="sendmail")
        chain = _counting_chain(listener, policies, auth.relay_policy(listener), metrics)
    else:
        chain = PolicyChain(policies, guard=auth.relay_policy(listener))
    factory = LocalSubmissionFactory(local, config.hostname, spool, chain, reactor, listener=listener,
                                     add_message_id=config.add_message_id, add_date=config.add_date,
                                     intake=metrics.intake_for(listener.name) if metrics is not None else None,
                                     send_as=send_as, judge_pool=judge_pool)
    if hasattr(spool, "import_judge"):
        spool.import_judge = DropOffJudge(chain, local)
    return ListenerParts(listener, factory, _listening_service(reactor, listener, factory) if listen else None)


def _build_deliverer(config: GatewayConfig, reactor: Any, disk: Any, auth: Any, metrics: Any = None,
                     redis: Any = None) -> tuple[Any, list, list]:
    if config.deliverer == "graph":
        from gateway.delivery.graph.credentials import (
            ConfigCredentialResolver,
            credentials_from_config,
        )
        from gateway.delivery.graph.factory import build_graph_deliverer

        resolver = auth.credential_resolver(ConfigCredentialResolver(credentials_from_config(config.graph)))
        admission, cluster_services = _cluster_admission(config, reactor, redis)
        deliverer, services = build_graph_deliverer(
            config.graph, reactor, resolver, on_request=metrics.graph_request if metrics is not None else None,
            connections=config.queue.concurrency, admission=admission)
        return deliverer, cluster_services + services, list(getattr(deliverer, "observers", ()))
    from gateway.delivery.capture import CaptureDeliverer

    return CaptureDeliverer(config.capture.outbox, disk.pool, reactor), [], []


def _cluster_admission(config: GatewayConfig, reactor: Any, redis: Any) -> tuple[Any, list]:
    """
    With ``[cluster]``: the mailbox admission every gateway of the cluster shares through Redis
    (and its service, which renews leases); without: None (the runner's queues pace alone).
    """
    cluster = config.cluster
    if cluster is None or redis is None:
        return None, []
    from gateway.cluster.admission import ClusterAdmission

    graph = config.graph
    admission = ClusterAdmission(redis, cluster, reactor, concurrency=graph.mailbox_concurrency,
                                 rate=graph.mailbox_rate, burst=graph.mailbox_burst, max_hold=graph.max_hold)
    return admission, [admission]


def _capped_listeners(config: GatewayConfig) -> list[ListenerConfig]:
    """
    Listeners with SIZE no larger than what the deliverer can carry, so clients learn the real
    limit at EHLO instead of being bounced after the gateway accepted the message.
    """
    if config.deliverer != "graph":
        return list(config.listeners)
    from gateway.delivery.graph.sizes import max_message_size

    cap = max_message_size(config.graph)
    return [
        attrs.evolve(l, limits=attrs.evolve(l.limits, max_message_size=min(l.limits.max_message_size, cap)))
        for l in config.listeners
    ]


__all__ = ["Components", "ListenerParts", "build_components"]
