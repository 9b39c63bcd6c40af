"""
The last step of stopping intake: wait, bounded, until the sessions the stop closed are gone.

Closing a session (L{GatewaySMTPFactory.close_sessions}) only *buffers* its last replies — the
250 of a message that finished during the stop, then the 421 — and asks the transport to close
once they are written.  Twisted's reactor, once the "before shutdown" triggers have fired,
disconnects every connection without writing what it still buffers; so a stop that went on
straight away would exit with those replies unsent, and the client would send an accepted
message again.  The single-process gateway and each intake worker (both run
L{gateway.service.GatewayService}) therefore wait here before they let the shutdown go on.

The wait is bounded: a client that never reads (or a TLS peer that never answers the
close_notify) must not hold the process up; what is still open after the bound is dropped.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from gateway.smtp.factory import GatewaySMTPFactory

#: How long a stopping gateway waits for closed sessions to write their last replies out.
SESSION_FLUSH_LIMIT = 5.0


def sessions_closed(factories: Iterable[GatewaySMTPFactory], clock: IReactorTime,
                    limit: float = SESSION_FLUSH_LIMIT) -> Deferred:
    """
    Fires with the number of sessions still open: 0 once every session of ``factories`` has
    gone, or whatever is left after ``limit`` seconds.  Never fails.
    """
    factories = list(factories)
    waits = [factory.sessions_gone() for factory in factories]
    done: Deferred = DeferredList(waits, consumeErrors=True)
    done.addTimeout(limit, clock, onTimeoutCancel=lambda result, timeout: None)
    done.addCallback(lambda _: sum(len(factory.sessions) for factory in factories))
    return done


__all__ = ["SESSION_FLUSH_LIMIT", "sessions_closed"]
