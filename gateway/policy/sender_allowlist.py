"""
``sender-allowlist``: which addresses a client may send as, in the envelope and in the header.

A relay that checks only the envelope sender lets any authenticated printer put
``From: ceo@corp.example`` on a message, and Graph sends it as that mailbox if the app may.
So the header From and Sender addresses are checked too (every address of every occurrence),
read through the gateway's one mail grammar (L{gateway.mail}); a header section it refuses is
refused here too, with its reason (``550 5.6.0``), never judged by a second reading.

Rules are chosen per session, most specific first: the entry of ``per_login`` matching the
authenticated login, else the narrowest ``per_network`` entry containing the client address,
else the global ``allow`` list.  A session no rule covers is not restricted by this policy
(other listener settings still apply), so ``per_login`` alone restricts only those logins.
"""

from __future__ import annotations

import ipaddress
from fnmatch import fnmatchcase
from typing import Any, Mapping, Optional

import attrs
from twisted.logger import Logger

from gateway.mail.errors import MailRefusal
from gateway.policy.addresses import (
    AddressPattern,
    client_ip,
    matches_any,
    message_header,
)
from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.context import PolicyContext
from gateway.policy.interfaces import (
    Answer,
    MessageView,
    PolicyConfigError,
    Reject,
    SessionView,
)
from gateway.policy.options import (
    IPNetwork,
    Option,
    PolicyOptions,
    login_names,
    login_patterns,
    reject_options,
)

CHECKS = ("envelope", "from", "sender")
_HEADER_NAMES = {"from": ("from", "resent-from"), "sender": ("sender", "resent-sender")}


@attrs.frozen
class SenderAllowlist(PolicyBase):
    allow: tuple[AddressPattern, ...] = ()
    per_login: tuple[tuple[str, tuple[AddressPattern, ...]], ...] = ()
    per_network: tuple[tuple[IPNetwork, tuple[AddressPattern, ...]], ...] = ()
    check: tuple[str, ...] = CHECKS
    allow_null_sender: bool = False
    reject: Reject = Reject(550, "5.7.1", "Sender address not allowed")
    log = Logger()

    def rules_for(self, session: SessionView) -> Optional[tuple[AddressPattern, ...]]:
        """The patterns that apply to this session, or None when no rule covers it."""
        if session.identity is not None and self.per_login:
            for login in login_names(session.identity):
                for pattern, rules in self.per_login:
                    if fnmatchcase(login, pattern):
                        return rules
        if self.per_network:
            ip = client_ip(session.client_address)
            if ip is not None:
                for network, rules in self.per_network:
                    if ip in network:
                        return rules
        return self.allow or None

    def on_mail_from(self, session: SessionView, sender: str) -> Answer:
        if "envelope" not in self.check:
            return CONTINUE
        rules = self.rules_for(session)
        if rules is None:
            return CONTINUE
        if sender == "":
            return CONTINUE if self.allow_null_sender else self._refuse(session, "envelope", "<>")
        return CONTINUE if matches_any(rules, sender) else self._refuse(session, "envelope", sender)

    def on_message(self, session: SessionView, message: MessageView) -> Answer:
        headers = [h for h in ("from", "sender") if h in self.check]
        if not headers:
            return CONTINUE
        rules = self.rules_for(session)
        if rules is None:
            return CONTINUE
        try:
            header = message_header(message)
        except MailRefusal as e:
            self._log(session, "header", e.text)
            return Reject(e.code, e.status, f"Message refused: {e.text}")
        for which in headers:
            for name in _HEADER_NAMES[which]:
                for mailbox in header.mailboxes(name):
                    if not matches_any(rules, mailbox.address):
                        return self._refuse(session, which, mailbox.address)
        return CONTINUE

    def _refuse(self, session: SessionView, where: str, address: str) -> Reject:
        self._log(session, where, f"{address} is not allowed")
        return self.reject

    def _log(self, session: SessionView, where: str, problem: str) -> None:
        login = session.identity.login if session.identity else None
        self.log.info(
            "sender-allowlist refused {where} sender on {listener} (login {login}, client {client}): {problem}",
            where=where, listener=session.listener, login=login, client=session.client_address, problem=problem,
        )


OPTIONS = (
    Option("allow", "list of address patterns", "[]",
           "senders every session may use (exact address, *@domain, glob); at least one of allow, "
           "per_login, per_network is required"),
    Option("per_login", "table: login -> list of address patterns", "{}",
           "senders per authenticated login (globs allowed in the login; exact logins win)"),
    Option("per_network", "table: CIDR network -> list of address patterns", "{}",
           "senders per client network (the narrowest network containing the client wins)"),
    Option("check", "list of strings", '["envelope", "from", "sender"]',
           "what is checked: the envelope sender, the header From, the header Sender"),
    Option("allow_null_sender", "boolean", "false", "accept the null reverse-path (MAIL FROM:<>, bounces)"),
    *reject_options("reject", "Sender address not allowed"),
)


def build(options: Mapping[str, Any], context: PolicyContext) -> SenderAllowlist:
    o = PolicyOptions(options, OPTIONS)
    allow = o.patterns("allow")
    per_login: list[tuple[str, tuple[AddressPattern, ...]]] = []
    for login, rules in o.pattern_table("per_login").items():
        if not login.strip():
            raise PolicyConfigError("login names must not be empty", "per_login")
        per_login.extend((pattern, rules) for pattern in login_patterns(login))
    # Exact logins win over globs whatever the order in the file.
    per_login.sort(key=lambda item: any(c in item[0] for c in "*?["))
    per_network = []
    for text, rules in o.pattern_table("per_network").items():
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise PolicyConfigError(f"{text!r} is not an IPv4/IPv6 address or CIDR network", "per_network") from None
        per_network.append((network, rules))
    per_network.sort(key=lambda item: item[0].prefixlen, reverse=True)
    check = o.strings("check", CHECKS)
    for c in check:
        if c not in CHECKS:
            raise PolicyConfigError(f"{c!r} is not one of {', '.join(CHECKS)}", "check")
    if not check:
        raise PolicyConfigError("must name at least one of " + ", ".join(CHECKS), "check")
    policy = SenderAllowlist(
        allow=allow,
        per_login=tuple(per_login),
        per_network=tuple(per_network),
        check=tuple(check),
        allow_null_sender=o.boolean("allow_null_sender", False),
        reject=o.reject("reject", "Sender address not allowed"),
    )
    o.finish()
    if not (allow or per_login or per_network):
        raise PolicyConfigError("set at least one of allow, per_login or per_network", "allow")
    return policy


__all__ = ["SenderAllowlist", "build", "CHECKS", "OPTIONS"]
