"""
Small building blocks for policies and their plugins.

L{PolicyBase} answers L{Continue} at every step, so a policy overrides only the steps it cares
about.  The plugin object the built-ins ship in ``twisted/plugins/graphsmtp_policies.py`` is
L{gateway.plugins.factory.LazyPluginFactory}, shared with the delivery observers.
"""

from __future__ import annotations

from zope.interface import implementer

from gateway.policy.interfaces import (
    Answer,
    Continue,
    IPolicy,
    MessageView,
    SessionView,
)

CONTINUE = Continue()


@implementer(IPolicy)
class PolicyBase:
    """Continue at every step; subclass and override the hooks you need."""

    def on_connect(self, session: SessionView) -> Answer:
        return CONTINUE

    def on_mail_from(self, session: SessionView, sender: str) -> Answer:
        return CONTINUE

    def on_rcpt_to(self, session: SessionView, recipient: str) -> Answer:
        return CONTINUE

    def on_message(self, session: SessionView, message: MessageView) -> Answer:
        return CONTINUE


__all__ = ["CONTINUE", "PolicyBase"]
