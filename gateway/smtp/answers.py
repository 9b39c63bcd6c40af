"""
Steps whose answer is usually there at once, without a chain of callbacks.

A message's steps (the chain's verdicts, the mail grammar's judgement of a small header, the
spool opening a writer) nearly always answer synchronously, yet each comes as a fired
L{Deferred}; adding a callback to a fired Deferred still runs Twisted's whole callback loop,
about ten Python calls per callback and four callbacks per SMTP reply (issue 13).  L{then}
does what ``addCallbacks`` does but calls the callback straight away when the value is
already known; a step still pending, or one that failed, goes through the Deferred as before,
so errors take exactly the path they always took.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def has_value(d: Deferred) -> bool:
    """
    Whether ``d`` has fired with a value (not a Failure) that is there to take: not paused
    (waiting on another Deferred), not in the middle of running its callbacks.  A fired
    Deferred that is neither has run every callback added so far, so taking its value now is
    what one more callback would have got.
    """
    return d.called and not d.paused and not d._runningCallbacks and not isinstance(d.result, Failure)


def then(step: Any, callback: Callable[..., Any], errback: Optional[Callable[[Failure], Any]] = None,
         *args: Any) -> Any:
    """
    ``step.addCallbacks(callback, errback, callbackArgs=args)``, except that a ``step`` that is
    a plain value, or a Deferred holding its value already, gives ``callback(value, *args)``
    now: a value, or a Deferred if the callback returned one.
    """
    if not isinstance(step, Deferred):
        return callback(step, *args)
    if has_value(step):
        return callback(step.result, *args)
    if errback is None:
        return step.addCallback(callback, *args)
    return step.addCallbacks(callback, errback, callbackArgs=args)


__all__ = ["has_value", "then"]
