"""
One delivery attempt through Graph, as the deliverer and its draft path share it.

An attempt is one entry sent as one mailbox with one token; the token may be replaced once
(a 401 evicts it).  A step that ends the attempt raises L{StepFailed} with the outcome to
report; a freshly issued token that Graph still refuses raises L{TenantAuthFailure}, which
pauses the whole tenant rather than failing one message.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import attrs

from gateway.delivery.graph.client import GraphResponse
from gateway.delivery.graph.credentials import TenantCredentials
from gateway.delivery.graph.outcomes import describe
from gateway.delivery.graph.token import AccessToken
from gateway.delivery.interfaces import MailboxKey, Permanent, Transient


class TenantAuthFailure(Exception):
    """Graph refused even a freshly issued token: the app's permissions or tenant are wrong."""

    def __init__(self, response: GraphResponse) -> None:
        super().__init__(describe(response))
        self.response = response


class StepFailed(Exception):
    """A Graph step ended the attempt; ``outcome`` is what to report."""

    def __init__(self, outcome: Union[Transient, Permanent]) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@attrs.define
class Attempt:
    """
    ``path`` names the way the message went (``sendMail-plain``, ``draft``, ``draft-large``…)
    for the statistics; ``token_accepted`` turns true once Graph took the token, which is what
    shows a tenant paused for a refused token works again.
    """

    entry: Any
    credentials: TenantCredentials
    token: AccessToken
    mailbox: str
    key: MailboxKey
    path: str = "sendMail"
    request_id: Optional[str] = None
    token_accepted: bool = False


__all__ = ["Attempt", "StepFailed", "TenantAuthFailure"]
