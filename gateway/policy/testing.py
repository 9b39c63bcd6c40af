"""
Old home of the policy test helpers, kept because plugin authors' tests import it (the
docstring example of earlier releases, and L{gateway.plugin}'s lazy helpers load it): the
helpers live in L{gateway.testing.policy}.  New code imports them from there or from
L{gateway.plugin}.
"""

from gateway.testing.policy import (
    RedisServer,
    TransactionResult,
    make_message,
    make_session,
    redis_server_path,
    run_transaction,
    start_redis_server,
)

__all__ = [
    "make_session", "make_message", "run_transaction", "TransactionResult",
    "RedisServer", "start_redis_server", "redis_server_path",
]
