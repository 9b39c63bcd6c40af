"""
``recipient-rules``: which recipients a listener (or a login, or a network) may send to.

The usual use is an internal-only relay: ``allow = ["*@corp.example"]`` lets a scanner mail
colleagues but not the outside world, whatever the Graph app itself is permitted to do.
``deny`` wins over ``allow``, so exceptions (``deny = ["all-staff@corp.example"]``) read
naturally.  Refusals happen at RCPT TO, so a message to a mix of allowed and refused
recipients goes to the allowed ones only and the client learns exactly which were refused.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from twisted.logger import Logger

from gateway.policy.addresses import AddressPattern, matches_any, without_subaddress
from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import Answer, PolicyConfigError, Reject, SessionView
from gateway.policy.options import (
    Option,
    PolicyOptions,
    Scope,
    reject_options,
    scope_options,
)


@attrs.frozen
class RecipientRules(PolicyBase):
    allow: tuple[AddressPattern, ...] = ()
    deny: tuple[AddressPattern, ...] = ()
    scope: Scope = Scope()
    reject: Reject = Reject(550, "5.7.1", "Recipient address not allowed")
    log = Logger()

    def on_rcpt_to(self, session: SessionView, recipient: str) -> Answer:
        if not self.scope.applies(session):
            return CONTINUE
        # Exchange delivers local+tag@domain to local@domain: a deny must catch that spelling too.
        base = without_subaddress(recipient)
        denied = matches_any(self.deny, recipient) or (base is not None and matches_any(self.deny, base))
        if denied or (self.allow and not matches_any(self.allow, recipient)):
            self.log.info(
                "recipient-rules refused {recipient} on {listener} (client {client})",
                recipient=recipient, listener=session.listener, client=session.client_address,
            )
            return self.reject
        return CONTINUE


OPTIONS = (
    Option("allow", "list of address patterns", "[]",
           "recipients allowed (exact address, *@domain, glob; +tags ignored); others are refused"),
    Option("deny", "list of address patterns", "[]", "recipients refused even when allow matches them"),
    *scope_options(),
    *reject_options("reject", "Recipient address not allowed"),
)


def build(options: Mapping[str, Any], context: PolicyContext) -> RecipientRules:
    o = PolicyOptions(options, OPTIONS)
    policy = RecipientRules(
        allow=o.patterns("allow"),
        deny=o.patterns("deny"),
        scope=o.scope(),
        reject=o.reject("reject", "Recipient address not allowed"),
    )
    o.finish()
    if not policy.allow and not policy.deny:
        raise PolicyConfigError("set allow and/or deny (lists of address patterns)", "allow")
    return policy


__all__ = ["RecipientRules", "build", "OPTIONS"]
