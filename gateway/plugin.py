"""
The public API for graphsmtp plugin authors: import everything a policy or delivery-observer
plugin needs from here, and nothing from elsewhere in ``gateway``.

    from gateway.plugin import IPlugin, IPolicyFactory, PolicyBase, PolicyOptions, Option, Reject

**Stability promise.** Every name in ``__all__`` is public.  It keeps its meaning and a
compatible signature in every 0.x and 1.x release; a name is only removed after it has raised a
``DeprecationWarning`` for at least one minor release and the changelog said so.  New keyword
arguments with defaults, new attributes on values and new names may be added.  Everything else
under ``gateway`` (including the modules these names come from) is internal and may move at
any time — the old paths stay working as re-exports for as long as this promise is kept, but
write new code against this module.  ``tests/test_plugin_api.py`` fails when a name documented
here disappears.

What is here, by job:

- *Plugin interfaces*: ``IPlugin`` (from ``twisted.plugin``), ``IPolicyFactory``, ``IPolicy``,
  ``IDeliveryObserverFactory``, ``IDeliveryObserver``.
- *Verdicts* a policy returns (or a Deferred of one): ``Continue``, ``CONTINUE``, ``Accept``,
  ``Reject``, ``TempFail``, ``EditHeaders``, ``HeaderEdit``, ``Verdict``.
- *What a policy sees*: ``SessionView``, ``MessageView``, ``Identity``, ``PolicyContext``; a
  delivery observer: ``ObserverContext`` and the outcomes ``Delivered``, ``Transient``,
  ``Permanent``.
- *Building blocks*: ``PolicyBase`` (answers Continue at every step), ``PolicyOptions`` (typed
  options that name the option in every error and refuse misspelt ones), ``Option`` with
  ``reject_options`` / ``scope_options`` (declare your options so ``graphsmtp-config policies``
  lists them), ``Scope``, ``PolicyConfigError``.
- *The mail grammar* (never parse addresses yourself: the gateway judges a header once):
  ``message_header`` (the judged header section of a ``MessageView``), ``MessageHeader``,
  ``Mailbox``, ``MailRefusal``, ``AddressPattern``, ``parse_patterns``, ``matches_any``,
  ``canonical``, ``mailbox_key``, ``without_subaddress``, ``header_text``, ``is_header_name``,
  ``format_address``, ``client_ip``.
- *Testing* (imported on first use, so a plugin module stays cheap to import):
  ``make_session``, ``make_message``, ``run_transaction`` (unit tests without SMTP) and
  ``start_gateway`` (a whole gateway on loopback; ``gw.send(...)`` returns a ``SendResult``),
  ``start_redis_server`` (a throw-away ``redis-server`` for policies that share state).
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.plugin import IPlugin

from gateway.delivery.interfaces import (
    Delivered,
    IDeliveryObserver,
    Permanent,
    Transient,
)
from gateway.delivery.observers import IDeliveryObserverFactory, ObserverContext
from gateway.mail.addresses import Mailbox, canonical, mailbox_key
from gateway.mail.errors import MailRefusal
from gateway.mail.message import MessageHeader
from gateway.plugins.errors import PolicyConfigError
from gateway.plugins.options import Option
from gateway.policy.addresses import (
    AddressPattern,
    client_ip,
    matches_any,
    message_header,
    parse_patterns,
    without_subaddress,
)
from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.context import PolicyContext
from gateway.policy.headers import format_address, header_text, is_header_name
from gateway.policy.interfaces import (
    Accept,
    Continue,
    EditHeaders,
    HeaderEdit,
    Identity,
    IPolicy,
    IPolicyFactory,
    MessageView,
    Reject,
    SessionView,
    TempFail,
    Verdict,
)
from gateway.policy.options import (
    PolicyOptions,
    Scope,
    reject_options,
    scope_options,
)

_TESTING = {
    "make_session": "gateway.testing.policy",
    "make_message": "gateway.testing.policy",
    "run_transaction": "gateway.testing.policy",
    "start_redis_server": "gateway.testing.policy",
    "start_gateway": "gateway.testing.harness",
    "SendResult": "gateway.testing.harness",
}


def __getattr__(name: str) -> Any:
    """The testing helpers, imported when first asked for (they pull in the whole gateway)."""
    module = _TESTING.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    # plugin interfaces
    "IPlugin", "IPolicyFactory", "IPolicy", "IDeliveryObserverFactory", "IDeliveryObserver",
    # verdicts
    "Continue", "CONTINUE", "Accept", "Reject", "TempFail", "EditHeaders", "HeaderEdit", "Verdict",
    # views and contexts
    "SessionView", "MessageView", "Identity", "PolicyContext", "ObserverContext",
    "Delivered", "Transient", "Permanent",
    # building blocks
    "PolicyBase", "PolicyOptions", "Option", "reject_options", "scope_options", "Scope", "PolicyConfigError",
    # mail grammar
    "message_header", "MessageHeader", "Mailbox", "MailRefusal", "AddressPattern", "parse_patterns",
    "matches_any", "canonical", "mailbox_key", "without_subaddress", "header_text", "is_header_name",
    "format_address", "client_ip",
    # testing
    "make_session", "make_message", "run_transaction", "start_gateway", "SendResult",
    "start_redis_server",
]
