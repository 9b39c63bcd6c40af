"""
The policy extension point: decisions taken during an SMTP session, before a message is spooled.

A policy sees an immutable view of the session and answers with a verdict (or a Deferred of
one).  Policies never touch the transport; the SMTP layer turns verdicts into replies.  The
chain runner (gateway.policy.chain) runs the configured policies in order for each step.

Third-party policies are ``IPolicyFactory`` plugins in any ``twisted/plugins`` directory on
``sys.path``; they are enabled by name in the configuration, never merely by being installed.
"""

from __future__ import annotations

import email.message
from typing import IO, Any, Callable, Mapping, Optional, Union

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from gateway.config.logins import login_names
from gateway.mail.errors import MailRefusal
from gateway.mail.message import MessageHeader
from gateway.plugins.errors import PolicyConfigError


@attrs.frozen
class Identity:
    """
    An authenticated login and what it may do.

    ``allowed_senders`` are patterns (exact address, ``*@domain``, glob) for the envelope sender
    and the header From/Sender; an empty tuple means no restriction from the login itself.
    ``credential_ref`` names non-default delivery credentials (Entra pass-through).
    ``names`` are the canonical names the login is matched by, most specific first
    (L{gateway.config.logins.login_names}): the auth checker computes them once when it accepts
    the login, so policies never parse a login; built by hand, they follow from ``login`` and
    ``credential_ref`` the same way.
    """

    login: str
    allowed_senders: tuple[str, ...] = ()
    credential_ref: Optional[str] = None
    names: tuple[str, ...] = attrs.field(
        default=attrs.Factory(lambda self: login_names(self.login, self.credential_ref is not None), takes_self=True),
        eq=False,
    )


@attrs.frozen
class SessionView:
    """What a policy may know about the session at the moment it is asked."""

    listener: str
    client_address: str
    client_port: int
    client_name: Optional[str] = None
    tls: bool = False
    identity: Optional[Identity] = None
    trusted_network: bool = False
    sender: Optional[str] = None
    recipients: tuple[str, ...] = ()


@attrs.frozen
class MessageView:
    """
    The message at end of data, before it is spooled.

    ``headers`` is the header section parsed with the ``email`` package
    (``email.message.Message`` built by ``email.parser.BytesHeaderParser`` with
    ``email.policy.SMTP``; None when the chain runs no configured policy, so nobody reads it);
    ``header_bytes`` is the raw header section.  ``open_body`` is a
    zero-argument callable returning a new binary file object positioned at the body
    (blocking: read it in a thread for anything large).  ``size`` is the whole message length.

    ``mail`` is the header section as judged by the gateway's one mail grammar
    (L{gateway.mail.message.MessageHeader}, after earlier policies' edits; the L{MailRefusal}
    when an edit made it unacceptable; None on views built without it): read addresses from
    it — or through L{gateway.policy.addresses.message_header}, which also works on views built
    without it — so a policy sees exactly what the relay guard and the deliverer see.
    """

    headers: Optional[email.message.Message]
    header_bytes: bytes
    size: int
    open_body: Callable[[], IO[bytes]]
    mail: Union[MessageHeader, MailRefusal, None] = None


@attrs.frozen
class Continue:
    """No objection; ask the next policy."""


@attrs.frozen
class Accept:
    """Accept this step without asking the remaining policies."""


@attrs.frozen
class Reject:
    """Permanent refusal: ``code`` 5xx, ``status`` an RFC 3463 code such as ``"5.7.1"``."""

    code: int = 550
    status: str = "5.7.1"
    text: str = "Rejected by policy"


@attrs.frozen
class TempFail:
    """Temporary refusal: ``code`` 4xx, ``status`` such as ``"4.7.1"``; the client retries."""

    code: int = 451
    status: str = "4.7.1"
    text: str = "Try again later"


@attrs.frozen
class HeaderEdit:
    """
    One header change at the message step.  ``action`` is ``"add"``, ``"remove"`` (all
    occurrences of ``name``) or ``"replace"`` (remove all, then add one).  ``value`` is the
    unfolded header value as text; the SMTP layer encodes non-ASCII as RFC 2047 words.
    """

    action: str
    name: str
    value: Optional[str] = None


@attrs.frozen
class EditHeaders:
    """Continue, applying these header edits (message step only)."""

    edits: tuple[HeaderEdit, ...]


Verdict = Union[Continue, Accept, Reject, TempFail, EditHeaders]
#: What an L{IPolicy} method returns: a verdict now, or a Deferred firing with one.
Answer = Union[Verdict, Deferred]


class IPolicy(Interface):
    """
    A decision-maker in the SMTP session.  Every method returns a Verdict or a Deferred firing
    with one.  A policy that does not care about a step returns L{Continue}.
    """

    def on_connect(session: SessionView):
        """At EHLO/HELO (after any PROXY header, so the client address is the real one)."""

    def on_mail_from(session: SessionView, sender: str):
        """At MAIL FROM; ``sender`` is the reverse-path (``""`` for the null sender)."""

    def on_rcpt_to(session: SessionView, recipient: str):
        """At each RCPT TO; ``session.recipients`` holds those accepted so far."""

    def on_message(session: SessionView, message: MessageView):
        """At end of data, before spooling; may return L{EditHeaders}."""


class IPolicyFactory(Interface):
    """
    A plugin that builds policies from configuration.

    Provided (together with ``twisted.plugin.IPlugin``) by module-level instances in
    ``twisted/plugins/*.py``.
    """

    name = Attribute("The name used in configuration: ``use = \"<name>\"`` (str).")
    description = Attribute("One line for ``graphsmtp-config --list-policies`` (str).")

    def build(options: Mapping[str, Any], context: Any) -> IPolicy:
        """
        Return a policy for these options (the table from the configuration, without ``use``).

        Raise L{PolicyConfigError} naming the option for anything invalid; it stops start-up.
        ``context`` gives shared services (a clock, the Redis connection when configured).
        """


class IAuthenticatedIdentity(Interface):
    """
    The avatar interface the SMTP layer asks the twisted.cred portal for at AUTH:
    ``portal.login(credentials, None, IAuthenticatedIdentity)`` fires with
    ``(IAuthenticatedIdentity, identity, logout)`` where ``identity`` is an L{Identity}.
    """


class LoginThrottled(Exception):
    """
    Raised (as a failure of ``portal.login``) when a client has failed too many logins: the
    SMTP layer answers 421 4.7.0 and disconnects instead of 535.
    """


__all__ = [
    "Identity", "SessionView", "MessageView",
    "Continue", "Accept", "Reject", "TempFail", "HeaderEdit", "EditHeaders", "Verdict", "Answer",
    "IPolicy", "IPolicyFactory", "PolicyConfigError", "IAuthenticatedIdentity", "LoginThrottled",
]
