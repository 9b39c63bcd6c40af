"""
Why a header section is refused, as the SMTP reply the intake gives.

Two kinds: the input is ambiguous or malformed (``550 5.6.0``: two reasonable parsers could
read it differently, so it is not guessed at), or it exceeds one of the grammar's explicit
limits (``552 5.3.4``: the reply names the limit).  Both are permanent: sending the same bytes
again changes nothing.
"""

from __future__ import annotations


class MailRefusal(ValueError):
    """A header section or address the gateway will not accept; ``code``/``status``/``text`` is the reply."""

    code = 550
    status = "5.6.0"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class MalformedHeader(MailRefusal):
    """Malformed or ambiguous syntax (``550 5.6.0``)."""


class LimitExceeded(MailRefusal):
    """One of the explicit limits of L{gateway.mail.limits.MailLimits} was exceeded (``552 5.3.4``)."""

    code = 552
    status = "5.3.4"


__all__ = ["MailRefusal", "MalformedHeader", "LimitExceeded"]
