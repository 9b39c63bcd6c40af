"""
Test support for the gateway and for plugin authors (public; imported by tests only).

- L{gateway.testing.fake_graph}: a fake Microsoft Graph + Entra served over HTTPS with a test
  CA (integration tests; also the ``graphsmtp-fake-graph`` command).
- L{gateway.testing.stub_graph}: the same fake through treq's C{StubTreq} on a C{Clock}, for
  fast unit tests of the Graph client, deliverer and observers that call Graph.
- L{gateway.testing.harness}: the whole gateway in-process on loopback (C{start_gateway}).
- L{gateway.testing.delivery}: C{ScriptedDeliverer}, C{RecordingObserver}, C{FakeTokenSource}.
- L{gateway.testing.logs}: C{LogCapture}, Twisted's C{EventLoggingObserver} plus the readings
  tests need (messages, warnings, "this secret never appears").
- L{gateway.testing.threads}: a reactor and thread pools that run blocking work inline.
- L{gateway.testing.spool}, L{gateway.testing.memory_spool}: a real spool on a test clock,
  file-operation doubles, and an in-memory spool.
- L{gateway.testing.policy}: drive a policy through a transaction; a throw-away redis-server.
- L{gateway.testing.certs}: the test CA.
- L{gateway.testing.timezone}: the local time zone for one test (log times, HTTP dates).
- L{gateway.testing.ports}: loopback ports for servers that must be told theirs before they start.
- L{gateway.testing.processes}: a started daemon's children and its spool commit process (/proc).

Older import paths kept as re-exports: C{gateway.policy.testing}, C{gateway.spool.testing}.
"""
