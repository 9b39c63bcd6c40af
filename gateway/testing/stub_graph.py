"""
The fake Graph without a network, for fast unit tests of the Graph client and deliverer:
treq's L{StubTreq} wraps the fake's resource, so requests go through the real treq and
twisted.web request code but over memory, and a L{Clock} drives every timeout and retry.

The fake behaves as over HTTPS (faults, drafts, upload sessions, throttling), minus what
needs a socket (``Fault.reset`` aborts a memory transport) and minus Entra: tokens come from
L{FakeGraphServer.issue_token} through a L{FakeTokenSource}, so MSAL is not involved.  The
over-HTTPS tests (L{gateway.testing.fake_graph.start_fake_graph}) stay the integration tests.

    stub = StubGraph.create()
    deliverer = stub.deliverer()
    outcome = stub.run(deliverer.deliver(entry))
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.config.graph import GraphConfig
from gateway.config.secrets import Secret
from gateway.delivery.graph.body import cooperator_for
from gateway.delivery.graph.client import GraphClient
from gateway.delivery.graph.credentials import ConfigCredentialResolver, credentials_from_config
from gateway.delivery.graph.deliverer import GraphDeliverer
from gateway.delivery.graph.token import AccessToken
from gateway.testing.delivery import FakeTokenSource
from gateway.testing.fake_graph import FakeGraphResource, FakeGraphServer

#: Where the stub pretends Graph and Entra live (never resolved: StubTreq routes by resource).
STUB_BASE = "https://graph.stub.invalid"


class _Buffer:
    """A consumer keeping what a body producer writes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class BufferingStubTreq:
    """
    A StubTreq that also takes body producers (StubTreq takes bytes only): the producer is read
    to its end first, as the network would, then the bytes are sent.
    """

    def __init__(self, stub: StubTreq) -> None:
        self.stub: Any = stub  # StubTreq's request methods are made at run time

    def request(self, method: str, url: str, data: Any = None, **kwargs: Any) -> Deferred:
        if data is None or isinstance(data, (bytes, str, dict, list)):
            return self.stub.request(method, url, data=data, **kwargs)
        buffer = _Buffer()
        d = data.startProducing(buffer)
        return d.addCallback(lambda _: self.stub.request(method, url, data=b"".join(buffer.parts), **kwargs))

    def flush(self) -> None:
        self.stub.flush()


class GraphTokens(FakeTokenSource):
    """A L{FakeTokenSource} whose tokens the stubbed fake accepts."""

    def __init__(self, fake: FakeGraphServer, clock: Clock) -> None:
        super().__init__(clock, lifetime=float(fake.token_lifetime))
        self.fake = fake
        self.stub_clock = clock

    def acquire(self, credentials: Any) -> Deferred:
        if not self.script and not self.failing:
            self.script.append(AccessToken(self.fake.issue_token(), self.stub_clock.seconds() + self.lifetime))
        return super().acquire(credentials)


@attrs.define(eq=False)
class StubGraph:
    """A fake Graph reached through ``http`` (a L{StubTreq}) on ``clock``."""

    fake: FakeGraphServer
    http: BufferingStubTreq
    clock: Clock

    @classmethod
    def create(cls, clock: Optional[Clock] = None, **options: Any) -> StubGraph:
        """A fresh fake (``options`` as for L{FakeGraphServer}) behind a StubTreq."""
        clock = clock if clock is not None else Clock()
        fake = FakeGraphServer(clock, None, client_secret="stub-client-secret", **options)
        fake.base = STUB_BASE
        return cls(fake, BufferingStubTreq(StubTreq(FakeGraphResource(fake))), clock)

    def client(self, **options: Any) -> GraphClient:
        """A real L{GraphClient} whose requests reach the fake through the stub."""
        return GraphClient(self.http, self.clock, cooperator_for(self.clock), **options)

    def config(self, **overrides: Any) -> GraphConfig:
        return attrs.evolve(self.fake.graph_config(client_secret=Secret("stub-client-secret", source="stub")),
                            **overrides)

    def token(self) -> AccessToken:
        """A token the fake accepts, valid for the fake's token lifetime."""
        return AccessToken(self.fake.issue_token(), self.clock.seconds() + self.fake.token_lifetime)

    def deliverer(self, config: Optional[GraphConfig] = None, **options: Any) -> GraphDeliverer:
        """A real L{GraphDeliverer} on the stub: its own client, and tokens the fake accepts."""
        config = config if config is not None else self.config()
        tokens: Any = GraphTokens(self.fake, self.clock)  # plays TokenProviders
        return GraphDeliverer(config, self.client(), tokens,
                              ConfigCredentialResolver(credentials_from_config(config)), self.clock, **options)

    def run(self, d: Any, rounds: int = 100_000) -> Any:
        """
        Pump the stub and the clock's zero-delay calls (body reads) until ``d`` fired; return
        its result (raise its failure).  ``d`` may be a coroutine (the client's calls are).  Fails if it is still waiting on the clock's future.
        """
        results: list = []
        Deferred.fromCoroutine(d).addBoth(results.append) if not isinstance(d, Deferred) else d.addBoth(results.append)
        for _ in range(rounds):
            if results:
                break
            self.http.flush()
            self.clock.advance(0)
        if not results:
            raise AssertionError("the stubbed Graph call did not finish; advance the clock?")
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result


__all__ = ["StubGraph", "GraphTokens", "BufferingStubTreq", "STUB_BASE"]
