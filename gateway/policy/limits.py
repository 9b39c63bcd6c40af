"""
``max-recipients`` and ``size-limit``: tighter limits for some listeners, logins or networks.

The listener's own limits (``[listener.limits]``) are enforced by the SMTP layer for everyone;
these policies can only lower them for a scope, e.g. a shared printer login that should never
mail more than 5 people at once or send more than 10 MB.  Replies follow RFC 5321: too many
recipients is a temporary 452 4.5.3 (the client sends the rest in another transaction), an
oversized message a permanent 552 5.3.4.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import (
    Answer,
    MessageView,
    PolicyConfigError,
    Reject,
    SessionView,
    TempFail,
)
from gateway.policy.options import Option, PolicyOptions, Scope, scope_options


@attrs.frozen
class MaxRecipients(PolicyBase):
    maximum: int
    scope: Scope = Scope()
    text: str = "Too many recipients"

    def on_rcpt_to(self, session: SessionView, recipient: str) -> Answer:
        if self.scope.applies(session) and len(session.recipients) >= self.maximum:
            return TempFail(452, "4.5.3", f"{self.text} (at most {self.maximum} per message)")
        return CONTINUE


@attrs.frozen
class SizeLimit(PolicyBase):
    maximum: int
    scope: Scope = Scope()
    text: str = "Message too big"

    def on_message(self, session: SessionView, message: MessageView) -> Answer:
        if self.scope.applies(session) and message.size > self.maximum:
            return Reject(552, "5.3.4", f"{self.text} (at most {self.maximum} bytes)")
        return CONTINUE


MAX_RECIPIENTS_OPTIONS = (
    Option("max", "integer", "10", "most recipients per message; more are refused with 452 4.5.3"),
    Option("text", "string", '"Too many recipients"', "text of the 452 reply"),
    *scope_options(),
)

SIZE_LIMIT_OPTIONS = (
    Option("max", "size", None, "required: the largest message, in bytes or as \"10MiB\"; larger is 552 5.3.4"),
    Option("text", "string", '"Message too big"', "text of the 552 reply (the limit is appended)"),
    *scope_options(),
)


def build_max_recipients(options: Mapping[str, Any], context: PolicyContext) -> MaxRecipients:
    o = PolicyOptions(options, MAX_RECIPIENTS_OPTIONS)
    maximum = o.integer("max", 10, 1, 100000)
    assert maximum is not None  # there is a default
    policy = MaxRecipients(
        maximum=maximum,
        scope=o.scope(),
        text=o.reply_text("text", "Too many recipients"),
    )
    o.finish()
    return policy


def build_size_limit(options: Mapping[str, Any], context: PolicyContext) -> SizeLimit:
    o = PolicyOptions(options, SIZE_LIMIT_OPTIONS)
    maximum = o.size("max", None)
    if maximum is None:
        raise PolicyConfigError("is required: the largest message in bytes, or a size such as \"10MiB\"", "max")
    policy = SizeLimit(maximum=maximum, scope=o.scope(), text=o.reply_text("text", "Message too big"))
    o.finish()
    return policy


__all__ = [
    "MaxRecipients", "SizeLimit", "build_max_recipients", "build_size_limit", "MAX_RECIPIENTS_OPTIONS",
    "SIZE_LIMIT_OPTIONS",
]
