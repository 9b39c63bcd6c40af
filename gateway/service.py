"""
The composition root: builds every component from the configuration and wires them together.

This is the only module that decides which concrete classes run; everything else receives its
collaborators (reactor/clock, thread pools, spool, deliverer, policy chains) as arguments, so
tests can build the same graph with fakes.  Construction validates everything that can be
validated without binding a port (certificates, policy options, credentials files), so a
mistake stops start-up with one line before the gateway listens.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from gateway.config import GatewayConfig


class GatewayService(MultiService):
    """Spool + queue runner + deliverer + one SMTP listener service per configured listener."""

    log = Logger()

    def __init__(self, config: GatewayConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        from gateway.wiring import build_components

        self.components = build_components(config, reactor)
        for child in self.components.services:
            child.setServiceParent(self)

    def startService(self) -> None:
        if self.config.deliverer == "capture":
            self.log.warn(
                "NO MICROSOFT GRAPH CREDENTIALS CONFIGURED: messages are delivered into the local "
                "capture outbox {outbox}, not sent anywhere. Configure [graph] to deliver for real.",
                outbox=self.config.capture.outbox,
            )
        super().startService()


__all__ = ["GatewayService"]
