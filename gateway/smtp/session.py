"""
What every command module (greeting, login, transaction) uses of its SMTP session
(L{gateway.smtp.protocol.GatewayESMTP}): answering in order, refusing, and what it knows of its
client.  Each module's own protocol adds only what is particular to it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.policy.interfaces import SessionView


class SessionReplies(Protocol):
    hostname: str
    log: Logger

    def reply(self, code: int, status: str, text: str) -> None: ...
    def refuse(self, refusal: Any) -> None: ...
    def reply_and_close(self, code: int, status: str, text: str) -> None: ...
    def sendLine(self, line: bytes) -> None: ...
    def flush_replies(self) -> None: ...
    def wait_for(self, d: Deferred, on_result: Callable[[Any], None],
                 on_failure: Optional[Callable[[Failure], None]] = None,
                 on_gone: Optional[Callable[[Any], None]] = None) -> None: ...
    def session_view(self) -> SessionView: ...
    def client_label(self) -> str: ...
    def secure(self) -> bool: ...


__all__ = ["SessionReplies"]
