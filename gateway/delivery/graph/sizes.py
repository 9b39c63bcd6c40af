"""
How big a message the gateway can promise to deliver through Graph, so the SMTP listeners can
advertise it in EHLO SIZE and refuse bigger mail before the client sends it.
"""

from __future__ import annotations

from gateway.config.graph import GraphConfig

#: Room for what the gateway itself adds before Graph sees the message: Received, Message-ID,
#: Date, and a regenerated Bcc header for envelope-only recipients.
HEADER_HEADROOM = 64 * 1024


def single_request_limit(config: GraphConfig) -> int:
    """The largest message (bytes) whose base64 still fits one Graph request."""
    return max(1024, config.max_request_size * 3 // 4 - HEADER_HEADROOM)


def max_message_size(config: GraphConfig) -> int:
    """
    The message size limit the listeners should enforce: Exchange's maximum when the
    large-message path (draft + upload sessions) is on, else what a single request carries.
    The wiring caps each listener's ``limits.max_message_size`` with this.
    """
    if config.large_messages:
        return config.max_message_size
    return min(config.max_message_size, single_request_limit(config))


__all__ = ["max_message_size", "single_request_limit", "HEADER_HEADROOM"]
