"""
Builds the component graph from a configuration.  Kept apart from gateway.service so tests
(and gateway.testing) can build the same graph with a chosen reactor, clock and deliverer.
"""

from __future__ import annotations

from typing import Any

import attrs

from gateway.config import GatewayConfig


@attrs.define
class Components:
    """What a running gateway is made of; ``services`` start in order and stop in reverse."""

    spool: Any
    deliverer: Any
    runner: Any
    listeners: list
    services: list


def build_components(config: GatewayConfig, reactor: Any, deliverer: Any = None) -> Components:
    """Wire spool → runner → deliverer and the SMTP listeners (filled in as components land)."""
    raise NotImplementedError("wiring lands with the spool, runner and SMTP listener")


__all__ = ["Components", "build_components"]
