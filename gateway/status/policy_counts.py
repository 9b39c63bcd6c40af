"""
Counting policy refusals by policy, without the policy chain or the policies knowing.

The composition root wraps each configured policy (and the gateway's relay guard) in a
L{CountingPolicy}: it passes every call through unchanged and, when the verdict is a
L{Reject} or L{TempFail}, tells ``count(policy_name, code)``.  A policy that raises is not
counted here (the chain logs it and answers 451 itself).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from zope.interface import implementer

from gateway.policy.interfaces import IPolicy, Reject, TempFail


@implementer(IPolicy)
class CountingPolicy:
    def __init__(self, policy: Any, name: str, count: Callable[[str, Optional[int]], None]) -> None:
        self.policy = policy
        self.name = name
        self._count = count

    def _seen(self, verdict: Any) -> Any:
        inner = getattr(verdict, "verdict", verdict)
        if isinstance(inner, (Reject, TempFail)):
            try:
                self._count(self.name, inner.code if isinstance(inner.code, int) else None)
            except Exception:  # noqa: BLE001 - a metrics problem never changes a verdict
                pass
        return verdict

    def _ask(self, method: str, *args: Any) -> Any:
        result = getattr(self.policy, method)(*args)
        if isinstance(result, Deferred):
            return result.addCallback(self._seen)
        return self._seen(result)

    def on_connect(self, session: Any) -> Any:
        return self._ask("on_connect", session)

    def on_mail_from(self, session: Any, sender: str) -> Any:
        return self._ask("on_mail_from", session, sender)

    def on_rcpt_to(self, session: Any, recipient: str) -> Any:
        return self._ask("on_rcpt_to", session, recipient)

    def on_message(self, session: Any, message: Any) -> Any:
        return self._ask("on_message", session, message)

    def __getattr__(self, name: str) -> Any:
        # Anything else a policy offers (open/close, attributes tests read) stays reachable.
        return getattr(self.policy, name)

    def __repr__(self) -> str:
        return repr(self.policy)


__all__ = ["CountingPolicy"]
