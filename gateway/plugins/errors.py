"""
The one error a plugin's ``build`` raises for a bad option, policies and observers alike.

It keeps its historic name ``PolicyConfigError`` (plugin authors import it from
L{gateway.plugin}); the registries turn it into a L{gateway.config.errors.ConfigError} that names
the full configuration key.
"""

from __future__ import annotations

from typing import Optional


class PolicyConfigError(ValueError):
    """
    A plugin's options are invalid; the message names the option and the problem.

    ``option`` (optional) is the name of the offending option, so start-up can report the full
    configuration key (``listener.submission.policies[1].messages``) rather than only the text.
    """

    def __init__(self, message: str, option: Optional[str] = None) -> None:
        super().__init__(message)
        self.option = option


__all__ = ["PolicyConfigError"]
