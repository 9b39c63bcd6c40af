"""
``header-rewrite``: make what a device sends look like what the organisation wants delivered.

Typical uses: send a printer's mail as a shared mailbox (``from = "scanner@corp.example"``,
keeping the device's display name, or ``from = "Scanner <scanner@corp.example>"`` to set one),
tag subjects (``subject_tag = "[Scan]"``, never twice), and strip headers that reveal internal
hosts (``strip_internal = true`` removes Received and X-Originating-IP).

Edits are returned as L{EditHeaders} and applied before the message is spooled, so the spool
holds exactly what is delivered.  Existing values are read decoded (encoded words resolved) and
written back as text; address headers are produced as ASCII with any non-ASCII display name
encoded by the ``email`` package, so encoded words stay valid and addresses are never encoded.
"""

from __future__ import annotations

import email.policy
from typing import Any, Mapping, Optional, Sequence

import attrs

from gateway.policy.addresses import header_addresses
from gateway.policy.base import CONTINUE, PolicyBase
from gateway.policy.context import PolicyContext
from gateway.policy.headers import format_address, header_text, is_header_name
from gateway.policy.interfaces import (
    Answer,
    EditHeaders,
    HeaderEdit,
    MessageView,
    PolicyConfigError,
    SessionView,
)
from gateway.policy.options import Option, PolicyOptions, Scope, scope_options

INTERNAL_HEADERS = ("Received", "X-Originating-IP")
_ADDRESS_OPTIONS = {"from": "From", "sender": "Sender", "reply_to": "Reply-To"}


@attrs.frozen
class AddressRewrite:
    """Set header ``header`` to ``address``; ``display_name`` None means keep the original's."""

    header: str
    address: str
    display_name: Optional[str] = None
    keep_display_name: bool = True

    def edit(self, message: Any) -> HeaderEdit:
        name = self.display_name
        if name is None and self.keep_display_name:
            found = header_addresses(message, self.header)
            name = next((n for n in found.display_names if n), "") if not found.problem else ""
        return HeaderEdit("replace", self.header, format_address(name or "", self.address))


@attrs.frozen
class HeaderRewrite(PolicyBase):
    scope: Scope = Scope()
    remove: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    addresses: tuple[AddressRewrite, ...] = ()
    subject_tag: Optional[str] = None

    def on_message(self, session: SessionView, message: MessageView) -> Answer:
        if not self.scope.applies(session):
            return CONTINUE
        edits = [HeaderEdit("remove", name) for name in self.remove]
        edits += [HeaderEdit("replace", name, value) for name, value in self.replace]
        edits += [HeaderEdit("add", name, value) for name, value in self.add]
        edits += [rewrite.edit(message) for rewrite in self.addresses]
        if self.subject_tag:
            subject = header_text(message.headers, "Subject")
            if subject is not None:
                # Decoded encoded words may hold line breaks; as text they would be refused as
                # header injection, and the message temp-failed for ever.
                subject = " ".join(subject.replace("\x00", " ").splitlines())
            if subject is None:
                edits.append(HeaderEdit("replace", "Subject", self.subject_tag))
            elif self.subject_tag not in subject:
                edits.append(HeaderEdit("replace", "Subject", f"{self.subject_tag} {subject}"))
        return EditHeaders(tuple(edits)) if edits else CONTINUE


def _header_name(name: Any, option: str) -> str:
    if not isinstance(name, str) or not is_header_name(name):
        raise PolicyConfigError(f"{name!r} is not a header name", option)
    return name


def _header_value(value: Any, option: str, name: str) -> str:
    if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
        raise PolicyConfigError(f"the value for {name} must be one line of text", option)
    return value


def _address_rewrite(text: str, option: str, header: str, keep_display_name: bool) -> AddressRewrite:
    parsed = email.policy.SMTP.header_factory(header, text)
    found: Sequence[Any] = getattr(parsed, "addresses", ())
    if parsed.defects or len(found) != 1 or not found[0].username or not found[0].domain:
        raise PolicyConfigError(
            f"{text!r} is not one address such as \"shared@corp.example\" or \"Shared <shared@corp.example>\"", option,
        )
    address = found[0]
    return AddressRewrite(
        header=header, address=address.addr_spec,
        display_name=address.display_name or None, keep_display_name=keep_display_name,
    )


OPTIONS = (
    Option("from", "address", None, "rewrite every From to this address (\"Name <a@b>\" sets the name too)"),
    Option("sender", "address", None, "rewrite Sender to this address"),
    Option("reply_to", "address", None, "rewrite Reply-To to this address"),
    Option("keep_display_name", "boolean", "true", "keep the original display name when rewriting an address"),
    Option("remove", "list of header names", "[]", "headers removed (every occurrence)"),
    Option("strip_internal", "boolean", "false", "remove Received and X-Originating-IP (internal topology)"),
    Option("replace", "table: header name -> text", "{}", "headers replaced (all occurrences removed, one added)"),
    Option("add", "table: header name -> text", "{}", "headers added"),
    Option("subject_tag", "string", None, "text put in front of the Subject (once)"),
    *scope_options(),
)


def _address_rewrites(o: PolicyOptions) -> tuple[AddressRewrite, ...]:
    """One rewrite for each of ``from``, ``sender``, ``reply_to`` that is set."""
    keep = o.boolean("keep_display_name", True)
    texts = ((option, header, o.string(option)) for option, header in _ADDRESS_OPTIONS.items())
    return tuple(_address_rewrite(text, option, header, keep) for option, header, text in texts if text is not None)


def _removed_headers(o: PolicyOptions) -> tuple[str, ...]:
    """``remove``, plus the internal-topology headers with ``strip_internal`` (each name once)."""
    remove = [_header_name(n, "remove") for n in o.strings("remove")]
    if o.boolean("strip_internal", False):
        remove += [n for n in INTERNAL_HEADERS if n.lower() not in {r.lower() for r in remove}]
    return tuple(remove)


def _header_table(o: PolicyOptions, option: str) -> tuple[tuple[str, str], ...]:
    """``replace`` or ``add``: header names and one-line values."""
    return tuple((_header_name(n, option), _header_value(v, option, n)) for n, v in o.table(option).items())


def _subject_tag(o: PolicyOptions) -> Optional[str]:
    tag = o.string("subject_tag")
    if tag is not None and (not tag.strip() or any(c in tag for c in "\r\n\x00")):
        raise PolicyConfigError("must be a non-empty single line", "subject_tag")
    return tag.strip() if tag else None


def build(options: Mapping[str, Any], context: PolicyContext) -> HeaderRewrite:
    o = PolicyOptions(options, OPTIONS)
    addresses = _address_rewrites(o)
    remove = _removed_headers(o)
    replace = _header_table(o, "replace")
    add = _header_table(o, "add")
    tag = _subject_tag(o)
    policy = HeaderRewrite(
        scope=o.scope(), remove=remove, replace=replace, add=add, addresses=addresses, subject_tag=tag,
    )
    o.finish()
    if not (policy.remove or policy.replace or policy.add or policy.addresses or policy.subject_tag):
        raise PolicyConfigError("nothing to do: set from, sender, reply_to, add, replace, remove, strip_internal or subject_tag", "from")
    return policy


__all__ = ["HeaderRewrite", "AddressRewrite", "INTERNAL_HEADERS", "build", "OPTIONS"]
