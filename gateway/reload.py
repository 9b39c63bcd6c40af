"""
What SIGHUP changes in a running gateway, in two steps so a bad file changes nothing:

1. L{prepare_reload} builds everything new from the re-read configuration — users file and
   login throttle, each existing listener's settings (trusted networks and senders, limits,
   AUTH, TLS files), its policy chain, the ``[local]`` socket's allowed senders, limits and
   chain, and the ``[[observer]]`` observers — without touching
   the running objects.  Any problem raises (a L{ConfigError} naming the key) and the caller
   keeps running the previous configuration.
2. L{apply_reload} swaps the prepared pieces in, in the reactor thread, all at once: sessions
   started afterwards see the new configuration; sessions already open keep what they had.

What only a restart can change (a listener's endpoint, TLS mode or PROXY setting, listeners
added or removed, the spool, the queue, Graph, Redis, the status endpoint, AUTH pass-through
and thread counts) is compared with the configuration the gateway *started* with and listed in
``ReloadPlan.restart_needed``, every time, until the gateway is restarted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import attrs
from twisted.cred.portal import Portal

from gateway.config import ConfigError, GatewayConfig
from gateway.config.model import ListenerConfig

if TYPE_CHECKING:
    from gateway.auth.build import Authentication
    from gateway.config.local import LocalConfig
    from gateway.policy.chain import PolicyChain
    from gateway.smtp.tls import TLSContextSource
    from gateway.wiring import Components, ListenerParts


@attrs.frozen
class ListenerChange:
    """The new settings of one running listener, ready to swap in."""

    part: "ListenerParts"
    listener: ListenerConfig
    chain: "PolicyChain"
    portal: Optional[Portal]
    #: New certificate files to adopt (None: the running ones stay).
    tls: Optional["TLSContextSource"] = None
    #: The [local] socket's new LocalConfig (per-user allowed senders), None for a [[listener]].
    local: Optional["LocalConfig"] = None


@attrs.frozen
class ReloadPlan:
    config: GatewayConfig
    auth: "Authentication"
    listeners: tuple[ListenerChange, ...]
    observers: tuple[Any, ...]
    restart_needed: tuple[str, ...]


def prepare_reload(started: GatewayConfig, new: GatewayConfig, components: Components, reactor: Any) -> ReloadPlan:
    """Build the new pieces (see the module docstring); raises on any problem, changes nothing."""
    from gateway.delivery.observers import build_observers
    from gateway.policy.registry import build_listener_chains
    from gateway.smtp.tls import TLSContextSource
    from gateway.wiring import capped_listeners, counting_chain

    restart = restart_needed(started, new)
    auth = _rebuild_auth(components.auth, new, reactor)
    chains = build_listener_chains(new, reactor, components.redis)
    wanted = {listener.name: listener for listener in capped_listeners(new)}
    changes = []
    for part in components.listeners:
        listener = wanted.get(part.config.name)
        if listener is None:
            continue  # reported as needing a restart; it keeps running as it is
        # What needs a new socket stays as it was bound.
        listener = attrs.evolve(listener, endpoint=part.config.endpoint, tls=part.config.tls,
                                proxy_protocol=part.config.proxy_protocol)
        chain = counting_chain(listener, chains[listener.name].policies, auth.relay_policy(listener), components.metrics)
        tls = None
        if part.tls is not None and _tls_files(listener) != _tls_files(part.tls.listener):
            tls = TLSContextSource(listener)
        changes.append(ListenerChange(part, listener, chain, auth.portal_for(listener), tls))
    local = _local_change(components, new, auth, reactor)
    if local is not None:
        changes.append(local)
    observers = build_observers(new.observers, reactor, new.hostname)
    opened = []
    try:
        for observer in observers:
            if hasattr(observer, "open"):
                observer.open()
                opened.append(observer)
    except Exception as e:
        _close(opened)
        raise ConfigError("observer", f"cannot open: {type(e).__name__}: {e}") from None
    return ReloadPlan(new, auth, tuple(changes), tuple(observers), tuple(restart))


def apply_reload(plan: ReloadPlan, components: Components) -> None:
    """Swap the prepared pieces in.  Runs in the reactor thread and cannot fail half way."""
    for change in plan.listeners:
        _apply_listener(change, plan.config, components)
    components.auth = plan.auth
    _swap_observers(tuple(plan.observers), components)


def _apply_listener(change: ListenerChange, new: GatewayConfig, components: Components) -> None:
    part = change.part
    if change.tls is not None and part.tls is not None:  # only a TLS listener gets new files
        part.tls.adopt(change.tls)
    part.factory.reconfigure(change.listener, new.hostname, change.chain, change.portal,
                             new.add_message_id, new.add_date)
    part.config = change.listener
    if change.local is not None:
        from gateway.smtp.local import DropOffJudge, LocalSubmissionFactory

        if isinstance(part.factory, LocalSubmissionFactory):  # the [local] socket's part
            part.factory.local = change.local
        components.spool.judge_imports_with(DropOffJudge(change.chain, change.local))


def _swap_observers(configured: tuple, components: Components) -> None:
    """The ``[[observer]]`` observers replace the previous ones wherever observers are told."""
    from gateway.delivery.observers import ObserversService

    old = list(components.configured_observers)

    def others(observers: Any) -> list:
        return [o for o in observers if all(o is not c for c in old)]

    components.configured_observers = list(configured)
    components.observers = [*configured, *others(components.observers)]
    components.runner.observers = (*configured, *others(components.runner.observers))
    for service in components.services:
        if isinstance(service, ObserversService):
            service.observers = [*configured, *others(service.observers)]
    _close(old)


#: What a restart changes, by the GatewayConfig field that holds it, named as in the file.
_RESTART_SECTIONS = (
    ("state_dir", "gateway] state_dir"), ("spool", "spool"), ("queue", "queue"), ("capture", "delivery.capture"),
    ("deliverer", "delivery"), ("graph", "graph"), ("plugin_paths", "gateway] plugin_paths"),
)
_RESTART_FEATURES = ("redis", "status", "cluster")


def restart_needed(started: GatewayConfig, new: GatewayConfig) -> list[str]:
    """What differs from the started configuration but only takes effect after a restart."""
    notes = _listener_restarts(started, new)
    notes += [f"[{name}] changed" for key, name in _RESTART_SECTIONS if getattr(started, key) != getattr(new, key)]
    if _local_socket(started) != _local_socket(new):
        notes.append("[local] socket or mode changed")
    notes += [f"[{key}] changed" for key in _RESTART_FEATURES if getattr(started, key) != getattr(new, key)]
    if started.auth.passthrough != new.auth.passthrough:
        notes.append("[auth.passthrough] changed")
    if started.auth.hash_threads != new.auth.hash_threads:
        notes.append("[auth] hash_threads changed")
    return notes


def _listener_restarts(started: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Listeners added or removed, and what of a running one needs a new socket."""
    running = {listener.name: listener for listener in started.listeners}
    wanted = {listener.name: listener for listener in new.listeners}
    notes = [f"listener {name} was added ({wanted[name].endpoint})" for name in sorted(set(wanted) - set(running))]
    notes += [f"listener {name} was removed (still listening on {running[name].endpoint})"
              for name in sorted(set(running) - set(wanted))]
    for name in sorted(set(running) & set(wanted)):
        before, after = running[name], wanted[name]
        notes += [f"listener {name} {key} changed ({getattr(before, key)} -> {getattr(after, key)})"
                  for key in ("endpoint", "tls", "proxy_protocol") if getattr(before, key) != getattr(after, key)]
    return notes


def _local_socket(config: GatewayConfig) -> tuple:
    """The ``[local]`` socket as bound: its path, and its mode when there is one."""
    socket = config.local.socket or None
    return (socket, config.local.mode) if socket else (None, None)


def _local_change(components: Components, new: GatewayConfig, auth: Any, reactor: Any) -> Optional[ListenerChange]:
    """
    The ``[local]`` socket's new allowed senders, limits and policy chain, built as
    L{gateway.wiring} builds them at start-up; None when there is no socket now or in the new
    file (a socket added or removed is reported by L{restart_needed}).
    """
    from gateway.smtp.local import LocalSubmissionFactory, check_allowed_senders
    from gateway.wiring import local_chain

    parts = [part for part in components.listeners if isinstance(part.factory, LocalSubmissionFactory)]
    if not parts or not new.local.socket:
        return None
    [part] = parts
    check_allowed_senders(new.local)
    listener, chain = local_chain(new, reactor, components.redis, auth, components.metrics)
    listener = attrs.evolve(listener, endpoint=part.config.endpoint)  # the bound socket stays
    return ListenerChange(part, listener, chain, None, local=new.local)


def _rebuild_auth(current: Any, new: GatewayConfig, reactor: Any) -> Any:
    """
    A new users file checker and (when its settings changed) a new login throttle, on the
    running AUTH thread pool; pass-through stays as started (its changes need a restart).
    """
    from gateway.auth.build import Authentication, users_checker
    from gateway.auth.passthrough import DispatchingChecker
    from gateway.auth.realm import IdentityRealm
    from gateway.auth.throttle import LoginThrottle

    config = attrs.evolve(new.auth, passthrough=current.config.passthrough,
                          hash_threads=current.config.hash_threads)
    users, checker = users_checker(config, reactor, current.threadpool)
    throttle = current.throttle
    if config.throttle != current.config.throttle:
        throttle = LoginThrottle(reactor, config.throttle)
    portal = Portal(IdentityRealm(), [DispatchingChecker(current.passthrough, checker)])
    return Authentication(config, portal, throttle, users, current.passthrough, current.credential_store,
                          current.services, current._endpoints, current.threadpool)


def _tls_files(listener: ListenerConfig) -> tuple:
    return (listener.tls_cert, listener.tls_key, listener.tls_min_version)


def _close(observers: Any) -> None:
    for observer in observers:
        try:
            if hasattr(observer, "close"):
                observer.close()
        except Exception:
            pass


__all__ = ["ReloadPlan", "ListenerChange", "prepare_reload", "apply_reload", "restart_needed"]
