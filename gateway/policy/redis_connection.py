"""
The gateway's connection to Redis, shared by every policy that keeps state there.

One Twisted service owns it: connecting starts when the service starts (or on first use,
whichever comes first), reconnecting with backoff is txredisapi's ``ClientService`` job, and
stopping the service closes the connection so shutdown leaves nothing behind.  Every command
gets an overall deadline (connect timeout + reply timeout) from the injected reactor, because
txredisapi would otherwise queue a command forever while Redis is unreachable — and an SMTP
client waiting on a policy must get a 451 instead.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from gateway.config.policy import RedisConfig


class RedisConnection(Service):
    """
    ``RedisConnection(config, reactor)``; add it to the application before the SMTP listeners
    so it starts first and stops last.  Policies call L{call} with a function of the
    txredisapi connection handler.

    ``reconnect_within`` caps the wait between two connection attempts (txredisapi's backoff
    otherwise grows to 10 s, with random jitter).  ``[cluster]`` sets it to ``retry``: a node
    that rejoins after an outage must know how long the others may still be starting alone.
    ``generation`` counts the connections made: a change says the connection was lost and made
    again meanwhile (Redis may have been away).
    """

    log = Logger()

    def __init__(self, config: RedisConfig, reactor: Any, reconnect_within: Optional[float] = None) -> None:
        self.config = config
        self._reactor = reactor
        self.reconnect_within = reconnect_within
        self._factory: Optional[txredisapi.RedisFactory] = None
        self._sentinel: Any = None
        self._stopped = False
        self.generation = 0
        self._started_again_at: Optional[float] = None
        self._said_started_again_at: Optional[float] = None

    def __repr__(self) -> str:
        return f"<RedisConnection {self.config.describe()}>"

    @property
    def key_prefix(self) -> str:
        return self.config.key_prefix

    def _handler(self) -> Any:
        if self._factory is not None and self._factory.stopped and not self._stopped:
            self._start_again()
        if self._factory is None and self.config.sentinels:
            return self._sentinel_handler()
        if self._factory is None:
            c = self.config
            factory = txredisapi.RedisFactory(
                uuid=c.describe(),
                dbid=c.db or None,
                poolsize=1,
                isLazy=True,
                handler=txredisapi.ConnectionHandler,
                charset="utf-8",
                password=c.password.reveal() if c.password is not None else None,
                replyTimeout=c.reply_timeout,
                convertNumbers=False,
                username=c.username,
            )
            factory.reconnect = True
            self._bound_reconnection(factory)
            endpoint: IStreamClientEndpoint
            if c.unix_socket:
                endpoint = UNIXClientEndpoint(self._reactor, c.unix_socket, timeout=c.connect_timeout)
            else:
                endpoint = HostnameEndpoint(self._reactor, c.host, c.port, timeout=c.connect_timeout)
            self.log.info("connecting to {where}", where=c.describe())
            factory.startConnecting(endpoint)
            self._factory = factory
        return self._factory.handler

    def _sentinel_handler(self) -> Any:
        """
        Through Redis Sentinel: txredisapi asks the sentinels for the master's address before
        each connection and drops its connections when the master changes.
        """
        c = self.config
        self._sentinel = txredisapi.Sentinel(list(c.sentinels), connectTimeout=c.connect_timeout,
                                             replyTimeout=c.reply_timeout)
        # Asking the sentinels for the master is bounded by connect_timeout too (not 10 s).
        self._sentinel.discovery_timeout = c.connect_timeout
        handler = self._sentinel.master_for(
            c.sentinel_master, dbid=c.db or None, poolsize=1, charset="utf-8",
            password=c.password.reveal() if c.password is not None else None,
            replyTimeout=c.reply_timeout, convertNumbers=False, username=c.username)
        self.log.info("connecting to {where}", where=c.describe())
        self._factory = handler._factory
        # txredisapi connects to the master with maxDelay as the timeout: make it connect_timeout.
        self._factory.maxDelay = c.connect_timeout
        self._bound_reconnection(self._factory)
        for sentinel in self._sentinel.sentinels:
            self._bound_reconnection(sentinel._factory, count=False)
        return handler

    def _bound_reconnection(self, factory: Any, count: bool = True) -> None:
        # Wrapped on the instance: txredisapi builds the Sentinel path's factory itself.
        if count:
            add = factory.addConnection

            def counted(connection: Any) -> Any:
                self.generation += 1
                return add(connection)

            factory.addConnection = counted
        if self.reconnect_within is not None:
            bound, delay = self.reconnect_within, factory.retryDelay
            factory.retryDelay = lambda attempt: min(bound, delay(attempt))

    def _start_again(self) -> None:
        """
        txredisapi stops reconnecting for good when AUTH or SELECT fails on a new connection,
        a reply timeout while Redis was busy included, and the gateway would then do without
        Redis until restarted.  Connect again, at most once per ``reconnect_within`` (5 s
        without), so a wrong password is retried, not hammered; said at most once a minute.
        """
        now = self._reactor.seconds()
        if self._started_again_at is not None and now - self._started_again_at < (self.reconnect_within or 5.0):
            return
        self._started_again_at = now
        if self._said_started_again_at is None or now - self._said_started_again_at >= 60.0:
            self._said_started_again_at = now
            self.log.warn("the connection to {where} stopped retrying (a login or database selection failed "
                          "or went unanswered); connecting again", where=self.config.describe())
        factory, self._factory = self._factory, None
        sentinel, self._sentinel = self._sentinel, None
        self._close(factory, sentinel)

    def startService(self) -> None:
        super().startService()
        self._handler()

    def stopService(self) -> Deferred:
        super().stopService()
        # A late caller (a session finishing during shutdown) must not reconnect behind our back.
        self._stopped = True
        factory, self._factory = self._factory, None
        sentinel, self._sentinel = self._sentinel, None
        return self._close(factory, sentinel)

    def _close(self, factory: Any, sentinel: Any) -> Deferred:
        if factory is None:
            return succeed(None)
        d = factory.disconnect().addErrback(lambda f: self.log.failure("closing the Redis connection failed", f))
        if sentinel is not None:
            d.addCallback(lambda _: sentinel.disconnect()).addErrback(
                lambda f: self.log.failure("closing the Redis Sentinel connections failed", f))
        return d

    def call(self, command: Callable[[Any], Deferred]) -> Deferred:
        """
        Run ``command(handler)`` (e.g. ``lambda r: r.eval(script, keys, args)``) and fire with
        its result, or fail with ``TimeoutError`` after connect + reply timeouts.
        """
        if self._stopped:
            return fail(txredisapi.ConnectionError("the Redis connection has been closed (gateway stopping)"))
        d = maybeDeferred(command, self._handler())
        d.addTimeout(self.config.connect_timeout + self.config.reply_timeout, self._reactor)
        return d


def redis_service(redis_config: Optional[RedisConfig], reactor: Any,
                  reconnect_within: Optional[float] = None) -> Optional[RedisConnection]:
    """
    The Redis service for the ``[redis]`` section (L{gateway.config.GatewayConfig.redis}), or
    None when none is configured.  Pass it as ``redis`` to
    L{gateway.policy.registry.build_listener_chains}.
    """
    if redis_config is None:
        return None
    service = RedisConnection(redis_config, reactor, reconnect_within)
    service.setName("redis")
    return service


__all__ = ["RedisConnection", "redis_service"]
