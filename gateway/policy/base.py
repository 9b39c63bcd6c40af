"""
Small building blocks for policies and their plugins.

L{PolicyBase} answers L{Continue} at every step, so a policy overrides only the steps it cares
about.  L{LazyPolicyFactory} is the plugin object the built-ins ship in
``twisted/plugins/graphsmtp_policies.py``: like twistd's ``ServiceMaker`` it imports the
policy's module only when the policy is configured, so plugin discovery stays cheap and a
problem in one built-in cannot stop the others from being listed.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import (
    Answer,
    Continue,
    IPolicy,
    IPolicyFactory,
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


@implementer(IPlugin, IPolicyFactory)
@attrs.frozen
class LazyPolicyFactory:
    """
    A policy plugin whose ``build`` is the function ``function(options, context)`` of
    ``module``, imported on first use.
    """

    name: str
    description: str
    module: str
    function: str = "build"
    options_name: str = "OPTIONS"

    def build(self, options: Mapping[str, Any], context: PolicyContext) -> Any:
        return getattr(importlib.import_module(self.module), self.function)(options, context)

    @property
    def options(self) -> tuple[Any, ...]:
        """
        The policy's documented options (L{gateway.policy.options.Option}), declared next to
        the code that reads them (``OPTIONS`` in ``module``); importing it is fine here, as only
        ``graphsmtp-config policies`` and the docs generator ask.
        """
        return tuple(getattr(importlib.import_module(self.module), self.options_name, ()))


__all__ = ["CONTINUE", "PolicyBase", "LazyPolicyFactory"]
