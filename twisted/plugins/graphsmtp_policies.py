"""
graphsmtp's built-in policies, discovered exactly like third-party ones.

Each object is an ``IPolicyFactory`` plugin; its module is imported only when a listener's
``policies`` list names it, so discovery stays cheap (see gateway.plugins.factory.LazyPluginFactory).
"""

from gateway.plugins.factory import LazyPluginFactory
from gateway.policy.interfaces import IPolicyFactory

senderAllowlist = LazyPluginFactory(
    IPolicyFactory,
    "sender-allowlist",
    "Allowed envelope senders and header From/Sender addresses, globally, per login or per network",
    "gateway.policy.sender_allowlist",
)

recipientRules = LazyPluginFactory(
    IPolicyFactory,
    "recipient-rules",
    "Allow or deny recipient addresses and domains (e.g. internal-only relays)",
    "gateway.policy.recipient_rules",
)

rateLimit = LazyPluginFactory(
    IPolicyFactory,
    "rate-limit",
    "Messages/recipients per window per login, client IP, sender or mailbox (memory or Redis)",
    "gateway.policy.rate_limit",
)

headerRewrite = LazyPluginFactory(
    IPolicyFactory,
    "header-rewrite",
    "Rewrite From/Sender/Reply-To, add/replace/remove headers, tag subjects, strip internal headers",
    "gateway.policy.header_rewrite",
)

maxRecipients = LazyPluginFactory(
    IPolicyFactory,
    "max-recipients",
    "A lower recipient limit for a listener, login or network (452 4.5.3)",
    "gateway.policy.limits",
    "build_max_recipients",
    "MAX_RECIPIENTS_OPTIONS",
)

sizeLimit = LazyPluginFactory(
    IPolicyFactory,
    "size-limit",
    "A lower message size limit for a listener, login or network (552 5.3.4)",
    "gateway.policy.limits",
    "build_size_limit",
    "SIZE_LIMIT_OPTIONS",
)
