"""
Turns the configured ``policies = [{ use = "...", ... }]`` lists into running policy chains.

Policies are discovered by interface (``IPolicyFactory`` plugins in any ``twisted/plugins``
directory) but enabled only by explicit name, in the configured order.  Everything that can be
wrong — an unknown name, a plugin file that does not import, a name claimed twice, an invalid
option — stops start-up with one L{ConfigError} naming the configuration key.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping, Optional, Sequence

import attrs

from gateway.config.errors import ConfigError
from gateway.config.model import PolicyRef
from gateway.plugins.discovery import Discovery, describe, discover
from gateway.policy.chain import PolicyChain
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import IPolicy, IPolicyFactory, PolicyConfigError


def discover_policies(package: Optional[ModuleType] = None) -> Discovery:
    """One scan of the plugin directories for L{IPolicyFactory} plugins."""
    return discover(IPolicyFactory, "policy", package)


def available_policies(package: Optional[ModuleType] = None) -> dict[str, Any]:
    """Every usable policy plugin by name (for ``graphsmtp-config --list-policies`` and errors)."""
    return dict(discover_policies(package).plugins)


def build_policy(factory: Any, name: str, options: Mapping[str, Any], context: PolicyContext, key: str) -> Any:
    """Build one policy, turning every way the factory can refuse into a ConfigError under ``key``."""
    try:
        policy = factory.build(dict(options), context)
    except PolicyConfigError as e:
        where = f"{key}.{e.option}" if e.option else key
        raise ConfigError(where, f"policy {name!r}: {e}") from None
    except ConfigError as e:
        where = f"{key}.{e.key}" if e.key else key
        raise ConfigError(where, f"policy {name!r}: {e.problem}") from None
    except Exception as e:
        raise ConfigError(key, f"policy {name!r} ({describe(factory)}) failed to build: {type(e).__name__}: {e}") from None
    if not IPolicy.providedBy(policy):
        raise ConfigError(key, f"policy {name!r}: {describe(factory)}.build returned {type(policy).__name__}, which does not provide IPolicy")
    return policy


def build_chain(
    refs: Sequence[PolicyRef],
    context: PolicyContext,
    discovery: Optional[Discovery] = None,
) -> PolicyChain:
    """
    Build the chain of the listener ``context.listener`` from its ``policies`` list, in order.
    ``discovery`` lets a caller building several listeners scan the plugin directories once.
    """
    if not refs:
        return PolicyChain(())
    if discovery is None:
        discovery = discover_policies()
    policies = []
    for i, ref in enumerate(refs):
        key = f"listener.{context.listener}.policies[{i}]"
        factory = discovery.resolve(ref.use, f"{key}.use")
        policies.append(build_policy(factory, ref.use, ref.options, attrs.evolve(context, key=key), key))
    return PolicyChain(tuple(policies))


def build_listener_chains(
    config: Any,
    clock: Any,
    redis: Any = None,
    discovery: Optional[Discovery] = None,
) -> dict[str, PolicyChain]:
    """
    A chain for every listener of a L{gateway.config.GatewayConfig}, keyed by listener name.
    ``redis`` is the running L{gateway.policy.redis_connection.RedisConnection} (or None).
    """
    needed = any(listener.policies for listener in config.listeners)
    if needed and discovery is None:
        discovery = discover_policies()
    chains = {}
    for listener in config.listeners:
        context = PolicyContext(
            clock=clock, listener=listener.name, redis=redis,
            hostname=config.hostname, limits=listener.limits,
        )
        chains[listener.name] = build_chain(listener.policies, context, discovery)
    return chains


__all__ = ["discover_policies", "available_policies", "build_policy", "build_chain", "build_listener_chains"]
