"""
An example graphsmtp policy plugin: refuse messages whose Subject contains a blocked word.

Copy this file into a ``twisted/plugins/`` directory — for example
``/etc/graphsmtp/plugins/twisted/plugins/mycompany_policies.py`` with
``plugin_paths = ["/etc/graphsmtp/plugins"]`` in ``[gateway]`` — and name the policy in a
listener's chain (``graphsmtp-plugin new`` writes a whole package to start from instead)::

    [[listener.policies]]
    use = "subject-filter"
    words = ["invoice overdue", "password reset"]
    reject_text = "Subject not allowed through this relay"
    logins = ["printer@corp.example"]          # optional: only these logins
    tag = "X-Subject-Filter"                     # optional: header added to messages that pass

Rules a plugin follows (docs/writing-policies.md explains each):

- Everything comes from ``gateway.plugin``, the public API (the rest of ``gateway`` is internal).
- The plugin object is a module-level *instance* that provides ``IPlugin`` and
  ``IPolicyFactory`` and has a unique ``name`` and a one-line ``description``.
- ``build(options, context)`` validates every option and raises ``PolicyConfigError`` naming
  the option; graphsmtp then refuses to start with ``listener.<name>.policies[<i>].<option>``.
- The policy never blocks: hooks return a verdict or a Deferred of one.  Anything slow (reading
  a large body, a web service) goes to a thread pool or an asynchronous client.
- Header values are text; encoded words are already decoded when you read them, and values you
  return are encoded for you.
- Keep imports at the top cheap: this module is imported whenever plugins are discovered.
"""

from __future__ import annotations

from typing import Any, Mapping

from zope.interface import implementer

from gateway.plugin import (
    CONTINUE, EditHeaders, HeaderEdit, IPlugin, IPolicyFactory, MessageView, Option, PolicyBase,
    PolicyConfigError, PolicyOptions, Scope, SessionView, header_text, is_header_name, reject_options,
    scope_options,
)


class SubjectFilter(PolicyBase):
    """The policy: only the message step matters, every other hook answers Continue (PolicyBase)."""

    def __init__(self, words: tuple[str, ...], reject: Any, scope: Scope, tag: str | None) -> None:
        self.words = words
        self.reject = reject
        self.scope = scope
        self.tag = tag

    def on_message(self, session: SessionView, message: MessageView) -> Any:
        if not self.scope.applies(session):
            return CONTINUE
        subject = (header_text(message.headers, "Subject") or "").casefold()
        if any(word in subject for word in self.words):
            return self.reject
        if self.tag:
            return EditHeaders((HeaderEdit("replace", self.tag, "passed"),))
        return CONTINUE


# Declared options: `graphsmtp-config policies` lists them, and a misspelt one is answered
# with the nearest of these names.
OPTIONS = (
    Option("words", "list of strings", None, "required: words or phrases refused in the Subject (any case)"),
    Option("tag", "header name", None, "header set to \"passed\" on messages that pass"),
    *reject_options("reject", "Subject not allowed"),
    *scope_options(),
)


@implementer(IPlugin, IPolicyFactory)
class SubjectFilterFactory:
    """The plugin: found by graphsmtp through twisted.plugin, builds the policy from its options."""

    name = "subject-filter"
    description = "Refuse messages whose Subject contains a blocked word"
    options = OPTIONS

    def build(self, options: Mapping[str, Any], context: Any) -> SubjectFilter:
        o = PolicyOptions(options, OPTIONS)
        words = tuple(w.casefold() for w in o.strings("words"))
        if not words or not all(w.strip() for w in words):
            raise PolicyConfigError("must be a non-empty list of words or phrases", "words")
        reject = o.reject("reject", "Subject not allowed", 550, "5.7.1")
        scope = o.scope()
        tag = o.string("tag")
        if tag is not None and not is_header_name(tag):
            raise PolicyConfigError("must be a header name such as X-Subject-Filter", "tag")
        o.finish()  # unknown options are typos: refuse them
        return SubjectFilter(words, reject, scope, tag)


# The module-level instance is what twisted.plugin.getPlugins finds.
subjectFilter = SubjectFilterFactory()
