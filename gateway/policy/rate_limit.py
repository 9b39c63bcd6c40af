"""
``rate-limit``: at most N messages and/or M recipients per window, per login, client IP,
envelope sender or sending mailbox (header From).

Over the limit the client gets ``451 4.7.1 ... try again in S seconds``: a rate limit is
temporary by nature, so it must never bounce mail (ARCHITECTURE invariant 4).  Where the key is
known early the check happens early — messages at MAIL FROM, recipients at each RCPT TO — so a
throttled client does not upload the message first.  The sending mailbox is only known from the
header, so with ``key = "mailbox"`` the message and its recipients are counted together at end
of data.

State lives in memory (default; bounded LRU) or, with ``backend = "redis"``, in the ``[redis]``
server so several gateways behind a load balancer share one budget.  If Redis cannot answer in
time the client gets a 451 as well (or the limit is skipped with ``fail_open = true``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway.mail.addresses import mailbox_key
from gateway.mail.errors import MailRefusal
from gateway.policy.addresses import client_key, message_header
from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import (
    Answer,
    MessageView,
    PolicyConfigError,
    SessionView,
    TempFail,
)
from gateway.policy.options import (
    Option,
    PolicyOptions,
    Scope,
    login_names,
    scope_options,
)
from gateway.policy.rate_backends import (
    BucketRequest,
    Decision,
    IRateLimitBackend,
    MemoryBuckets,
    RedisBuckets,
)

KEYS = ("login", "client-ip", "sender", "mailbox")
_KEY_ALIASES = {
    "client_ip": "client-ip", "ip": "client-ip",
    "envelope-sender": "sender", "envelope_sender": "sender",
    "header-from": "mailbox", "header_from": "mailbox", "from": "mailbox",
}
_UNAVAILABLE = TempFail(451, "4.3.0", "Rate limiter unavailable, try again later")


def _mailbox(address: str) -> str:
    """
    One bucket per mailbox, however it is spelt: the canonical form without ``+tag``
    (L{gateway.mail.canonical}), since Exchange delivers every ``local+tag`` to ``local``.
    """
    return mailbox_key(address) or address.strip().lower()


@attrs.frozen
class RateLimit(PolicyBase):
    backend: Any
    key: str
    window: float
    name: str
    messages: Optional[int] = None
    recipients: Optional[int] = None
    scope: Scope = Scope()
    text: str = "Rate limit exceeded"
    ipv6_prefix: int = 64
    fail_open: bool = False
    log = Logger()

    # -- which bucket a session belongs to

    def subject(self, session: SessionView, sender: Optional[str] = None, message: Optional[MessageView] = None) -> Optional[str]:
        """The value the limit is counted against, or None when it does not apply."""
        if self.key == "login":
            # Per app for Entra pass-through logins, whatever spelling of the login was used.
            return login_names(session.identity)[-1] if session.identity is not None else None
        if self.key == "client-ip":
            return client_key(session.client_address, self.ipv6_prefix) if session.client_address else None
        if self.key == "sender":
            value = sender if sender is not None else session.sender
            if value is None:
                return None
            return _mailbox(value) if value else "<>"
        if message is None:
            return None
        try:
            mailbox = message_header(message).header_sender()
        except MailRefusal:
            mailbox = None
        if mailbox is None:
            # Malformed or missing From: count it under one shared bucket rather than not at
            # all, so a client cannot escape the limit by sending garbage headers.
            return "<unparseable>"
        # header_sender() is the mailbox the sending-mailbox decision uses (From, or Sender
        # when From lists several), so a client cannot rotate the counted address.
        return mailbox.key

    def _request(self, subject: str, metric: str, capacity: int, cost: float) -> BucketRequest:
        # The {hash tag} keeps a message's buckets in one Redis Cluster slot, as one script
        # must touch keys of a single slot.
        return BucketRequest(
            key=f"{{{self.name}:{self.key}:{subject}}}:{metric}",
            capacity=float(capacity), window=self.window,
            cost=float(min(cost, capacity)),
        )

    # -- the hooks

    def on_mail_from(self, session: SessionView, sender: str) -> Answer:
        if self.key == "mailbox" or self.messages is None or not self.scope.applies(session):
            return CONTINUE
        subject = self.subject(session, sender=sender)
        if subject is None:
            return CONTINUE
        return self._take(session, subject, [self._request(subject, "messages", self.messages, 1)])

    def on_rcpt_to(self, session: SessionView, recipient: str) -> Answer:
        if self.key == "mailbox" or self.recipients is None or not self.scope.applies(session):
            return CONTINUE
        subject = self.subject(session)
        if subject is None:
            return CONTINUE
        return self._take(session, subject, [self._request(subject, "recipients", self.recipients, 1)])

    def on_message(self, session: SessionView, message: MessageView) -> Answer:
        if self.key != "mailbox" or not self.scope.applies(session):
            return CONTINUE
        subject = self.subject(session, message=message)
        if subject is None:
            return CONTINUE
        requests = []
        if self.messages is not None:
            requests.append(self._request(subject, "messages", self.messages, 1))
        if self.recipients is not None and session.recipients:
            requests.append(self._request(subject, "recipients", self.recipients, len(session.recipients)))
        return self._take(session, subject, requests)

    def _take(self, session: SessionView, subject: str, requests: Sequence[BucketRequest]) -> Deferred:
        if not requests:
            return succeed(CONTINUE)
        d = self.backend.take(requests)

        def decided(decision: Decision) -> Any:
            if decision.allowed:
                return CONTINUE
            seconds = max(1, math.ceil(decision.retry_after - 1e-6))
            self.log.info(
                "rate-limit {name} reached for {key} {subject} on {listener}; retry in {seconds}s",
                name=self.name, key=self.key, subject=subject, listener=session.listener, seconds=seconds,
            )
            return TempFail(451, "4.7.1", f"{self.text}, try again in {seconds} seconds")

        def unavailable(failure: Any) -> Any:
            self.log.failure("rate-limit {name}: backend failed", failure, name=self.name)
            return CONTINUE if self.fail_open else _UNAVAILABLE

        return d.addCallbacks(decided, unavailable)


OPTIONS = (
    Option("key", "string", '"login"',
           "what is counted: login, client-ip, sender (envelope) or mailbox (header From)"),
    Option("messages", "integer", None, "most messages per window (set messages and/or recipients)"),
    Option("recipients", "integer", None, "most recipients per window (set messages and/or recipients)"),
    Option("per", "duration", '"1h"', "the window, such as \"1h\" or \"10m\""),
    Option("backend", "string", '"memory"', "memory (this gateway) or redis (shared through [redis])"),
    Option("max_keys", "integer", "100000", "most keys remembered in memory (least recently used go first)"),
    Option("name", "string", "the policy's configuration key",
           "namespace of the counters; give two policies one name to share a budget"),
    Option("text", "string", '"Rate limit exceeded"', "text of the 451 4.7.1 reply (the wait is appended)"),
    Option("ipv6_prefix", "integer", "64", "with key = client-ip, IPv6 clients are counted per prefix of this length"),
    Option("fail_open", "boolean", "false", "when Redis does not answer, let the message through instead of 451"),
    *scope_options(),
)


def build(options: Mapping[str, Any], context: PolicyContext) -> RateLimit:
    o = PolicyOptions(options, OPTIONS)
    key = o.string("key", "login")
    assert key is not None
    key = _KEY_ALIASES.get(key, key)
    if key not in KEYS:
        raise PolicyConfigError(f"{key!r} is not one of {', '.join(KEYS)}", "key")
    messages = o.integer("messages", None, 1, 10**9)
    recipients = o.integer("recipients", None, 1, 10**9)
    if messages is None and recipients is None:
        raise PolicyConfigError("set messages and/or recipients (the most allowed per window)", "messages")
    window = o.duration("per", 3600.0)
    if window <= 0:
        raise PolicyConfigError("must be more than 0 seconds", "per")
    backend_name = o.string("backend", "memory", ("memory", "redis"))
    max_keys = o.integer("max_keys", 100_000, 1, 10**8)
    assert max_keys is not None  # there is a default
    name = o.string("name", getattr(context, "key", "") or "rate-limit")
    if not name or any(c.isspace() or c in "{}" for c in name):
        raise PolicyConfigError("must be a word without spaces or braces", "name")
    text = o.reply_text("text", "Rate limit exceeded")
    ipv6_prefix = o.integer("ipv6_prefix", 64, 1, 128)
    assert ipv6_prefix is not None  # there is a default
    fail_open = o.boolean("fail_open", False)
    scope = o.scope()
    o.finish()
    if backend_name == "redis":
        connection = getattr(context, "redis", None)
        if connection is None:
            raise PolicyConfigError("is \"redis\" but no [redis] section is configured", "backend")
        backend: IRateLimitBackend = RedisBuckets(connection, context.clock, connection.key_prefix)
    else:
        backend = MemoryBuckets(context.clock, max_keys)
    return RateLimit(
        backend=backend, key=key, window=window, name=name, messages=messages, recipients=recipients,
        scope=scope, text=text, ipv6_prefix=ipv6_prefix, fail_open=fail_open,
    )


__all__ = ["RateLimit", "KEYS", "build", "OPTIONS"]
