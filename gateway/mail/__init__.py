"""
The one mail grammar of the gateway (ARCHITECTURE invariant 9).

Every component that reads header fields or addresses of client input — SMTP intake, the
relay guard, the built-in policies and the policy helpers, the Graph deliverer's MIME shaping
and mailbox choice, sendmail, the users file and configuration validation — calls this package;
nothing else parses them.  It is the lowest layer: it imports nothing from the gateway.

- L{gateway.mail.fields}: what is a header field, what ends the section, raw-byte edits;
- L{gateway.mail.addresses}: mailboxes, groups, display names, comments, encoded words;
- L{gateway.mail.simple}: the common address shapes read without the tokenizer (same results);
- L{gateway.mail.encoded_words}: RFC 2047 encoded words, strict and lenient;
- L{gateway.mail.canonical}: one spelling per mailbox;
- L{gateway.mail.patterns}: sender patterns;
- L{gateway.mail.message}: a header section judged once, and the sending mailbox chosen from it;
- L{gateway.mail.limits} and L{gateway.mail.errors}: the explicit bounds and the refusals.
"""

from gateway.mail.addresses import (
    AddressList,
    Group,
    Mailbox,
    canonical,
    mailbox_key,
    parse_addr_spec,
    parse_address_list,
)
from gateway.mail.errors import LimitExceeded, MailRefusal, MalformedHeader
from gateway.mail.fields import Field, apply_edits, header_line, split_fields
from gateway.mail.limits import DEFAULT_LIMITS, MailLimits
from gateway.mail.message import (
    MessageHeader,
    choose_sending_mailbox,
    parse_header_section,
)
from gateway.mail.patterns import (
    ANY_SENDER,
    PatternError,
    SenderPattern,
    matches_any,
    parse_patterns,
)

__all__ = [
    "AddressList", "Group", "Mailbox", "canonical", "mailbox_key", "parse_addr_spec", "parse_address_list",
    "LimitExceeded", "MailRefusal", "MalformedHeader", "Field", "apply_edits", "header_line", "split_fields",
    "DEFAULT_LIMITS", "MailLimits", "MessageHeader", "choose_sending_mailbox", "parse_header_section",
    "ANY_SENDER", "PatternError", "SenderPattern", "matches_any", "parse_patterns",
]
