"""
The policy catalogue: every policy's documented options, as text for ``graphsmtp-config
policies`` and as Markdown for ``docs/policies.md``.

Both are rendered from the ``options`` each factory declares (L{gateway.plugins.options.Option}),
the same list its ``build`` reads with, so the documentation cannot drift from the code: the
generated file is compared with a fresh rendering by the test suite.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from gateway.plugins.options import Option

MARKDOWN_HEADER = """\
# Built-in policies and their options

<!-- Generated from the option declarations in gateway/policy/*.py by
     `graphsmtp-config policies --markdown > docs/policies.md`; do not edit by hand
     (tests/test_policy_catalog.py fails when this file is stale). -->

Name a policy in a listener's chain with `use = "<name>"` and give its options next to it
(see [writing-policies.md](writing-policies.md)).  An unknown option stops start-up and names
the nearest valid one.  `logins` and `networks` narrow which sessions a policy applies to;
`reject_text`, `reject_code` and `reject_status` shape the refusal of the policies that have them.
"""


def factory_options(factory: Any) -> tuple[Option, ...]:
    """The options a factory declares (``()`` for a third-party factory that declares none)."""
    try:
        return tuple(getattr(factory, "options", ()) or ())
    except Exception:  # a broken declaration must not hide the other policies
        return ()


def builtin_policy_factories() -> list[Any]:
    """graphsmtp's own policy factories (not whatever else is installed), sorted by name."""
    from gateway.policy.interfaces import IPolicyFactory
    from twisted.plugins import graphsmtp_policies

    found = [value for value in vars(graphsmtp_policies).values() if IPolicyFactory.providedBy(value)]
    return sorted(found, key=lambda factory: factory.name)


def _default(option: Option) -> str:
    return "—" if option.default is None else option.default


def render_text(factories: Iterable[Any]) -> str:
    """One block per policy: the name and description, then one line per option."""
    blocks = []
    for factory in sorted(factories, key=lambda f: f.name):
        lines = [f"{factory.name:<20} {getattr(factory, 'description', '')}"]
        options = factory_options(factory)
        if not options:
            lines.append("    (declares no options)")
        for option in options:
            default = "" if option.default is None else f" = {option.default}"
            lines.append(f"    {option.name} ({option.type}{default})")
            lines.append(f"        {option.help}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(factories: Sequence[Any]) -> str:
    """``docs/policies.md``: a section and an option table per policy."""
    parts = [MARKDOWN_HEADER]
    for factory in sorted(factories, key=lambda f: f.name):
        parts.append(f"\n## `{factory.name}`\n\n{getattr(factory, 'description', '')}.\n")
        options = factory_options(factory)
        if not options:
            parts.append("\nNo options.\n")
            continue
        parts.append("\n| Option | Type | Default | Meaning |\n|---|---|---|---|\n")
        for option in options:
            parts.append(f"| `{option.name}` | {_cell(option.type)} | {_cell(_default(option))} | {_cell(option.help)} |\n")
    return "".join(parts)


__all__ = ["builtin_policy_factories", "factory_options", "render_markdown", "render_text", "MARKDOWN_HEADER"]
