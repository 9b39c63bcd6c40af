"""
Builds the component graph from a configuration.

Kept apart from L{gateway.service} so tests (and L{gateway.testing.harness}) can build exactly
the same graph with a chosen reactor and deliverer.  Construction does everything that can fail
on a bad configuration — reading certificates, building policies, opening the users file — so
a mistake stops start-up with one line before any port is bound.
"""

from __future__ import annotations

from typing import Any

import attrs

from gateway.config import GatewayConfig
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


def build_components(config: GatewayConfig, reactor: Any, deliverer: Any = None) -> Components:
    """
    Wire spool → runner → deliverer, AUTH, policies and one SMTP listener per configured
    listener.  ``deliverer`` replaces the configured one (tests deliver into a fake).
    """
    from gateway.auth.build import build_auth
    from gateway.delivery.observers import ObserversService, build_observers
    from gateway.policy.redis_connection import redis_service
    from gateway.policy.registry import build_listener_chains
    from gateway.smtp.factory import GatewaySMTPFactory
    from gateway.smtp.listener import listener_service
    from gateway.smtp.tls import TLSContextSource
    from gateway.spool.runner import QueueRunner
    from gateway.spool.store import DirectorySpool
    from gateway.spool.watch import IncomingWatcher
    from gateway.threads import ThreadPoolService

    services: list = []
    disk = ThreadPoolService("graphsmtp-spool", 1, config.spool.threads)
    services.append(disk)
    spool = DirectorySpool(config.spool.directory, disk.pool, reactor, archive_delivered=config.spool.archive_delivered)

    auth = build_auth(config.sections["auth"], config.state_dir, reactor=reactor, graph_config=config.graph)
    services.extend(auth.services)

    delivery_observers: list = []
    if deliverer is None:
        deliverer, delivery_services, delivery_observers = _build_deliverer(config, reactor, disk, auth)
        services.extend(delivery_services)

    redis = redis_service(config, reactor)
    if redis is not None:
        services.append(redis)

    observers = build_observers(config.sections.get("observers", ()), reactor, config.hostname)
    observers.extend(delivery_observers)
    services.append(ObserversService(observers))

    runner = QueueRunner(spool, deliverer, config.queue, reactor, observers)
    services.append(runner)
    services.append(IncomingWatcher(spool.disk.layout.incoming, runner.kick, reactor))

    chains = build_listener_chains(config, reactor, redis)
    # Header sections are judged off the reactor thread, in a pool of their own: the reactor's
    # default pool may be busy with (or full of) other work, and judging must never wait on it.
    mail_pool = ThreadPoolService("graphsmtp-mail", 1, 2)
    services.append(mail_pool)
    listeners = []
    for listener in _capped_listeners(config):
        tls = TLSContextSource(listener) if listener.tls != "none" else None
        chain = PolicyChain(chains[listener.name].policies, guard=auth.relay_policy(listener))
        factory = GatewaySMTPFactory(
            listener, config.hostname, spool, chain, reactor,
            portal=auth.portal_for(listener), tls=tls,
            add_message_id=config.add_message_id, add_date=config.add_date,
        )
        # The sending-mailbox rule is decided at intake and recorded with each message.
        factory.send_as = config.graph.send_as if config.graph is not None else "header-from"
        factory.judge_pool = mail_pool.pool
        listeners.append(ListenerParts(listener, factory, listener_service(reactor, listener, factory), tls))
    return Components(spool, deliverer, runner, listeners, services, auth, observers)


def _build_deliverer(config: GatewayConfig, reactor: Any, disk: Any, auth: Any) -> tuple[Any, list, list]:
    if config.deliverer == "graph":
        from gateway.delivery.graph.credentials import ConfigCredentialResolver, credentials_from_config
        from gateway.delivery.graph.factory import build_graph_deliverer

        resolver = auth.credential_resolver(ConfigCredentialResolver(credentials_from_config(config.graph)))
        deliverer, services = build_graph_deliverer(config.graph, reactor, resolver)
        return deliverer, services, list(getattr(deliverer, "observers", ()))
    from gateway.delivery.capture import CaptureDeliverer

    return CaptureDeliverer(config.capture.outbox, disk.pool, reactor), [], []


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
