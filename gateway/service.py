"""
The composition root: L{makeService} builds a gateway from its options, and
L{GatewayService} runs it.

Start order: thread pools and connections, observers, the queue runner (which recovers the
spool), then the SMTP listeners.  Stop order is the reverse and *sequential*: stop listening,
let transactions already in DATA finish (bounded), close the other sessions with 421, stop the
queue runner (bounded by ``queue.shutdown_grace``), and only then stop the thread pools —
stopping them earlier would strand an fsync or a token request half way.  The stop ends once
the closed sessions have written their last replies out (bounded, L{gateway.smtp.closing}).  Twisted's MultiService stops children all at
once, which is why this class orders the stop itself.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, Callable, Optional

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from gateway.auth.build import build_auth
from gateway.config import GatewayConfig
from gateway.policy.redis_connection import redis_service
from gateway.smtp.closing import SESSION_FLUSH_LIMIT, sessions_closed
from gateway.status.metrics import GatewayMetrics
from gateway.wiring import (
    Components,
    build_delivery,
    build_listeners,
    build_observers,
    build_queue,
    build_spool,
    build_status,
    certificate_watch,
    given_delivery,
    load_plugins,
)

if TYPE_CHECKING:
    from gateway.status.web import StatusServices


@attrs.frozen
class GatewayOptions:
    """
    What L{makeService} is asked to build.  ``reload_config`` re-reads the configuration for
    SIGHUP (None: SIGHUP reloads certificates only); ``deliverer`` replaces the configured one
    (tests deliver into a fake); ``listen=False`` builds no listening service and no status
    endpoint (``graphsmtp-config check``: endpoints are only validated).
    """

    config: GatewayConfig
    reload_config: Optional[Callable[[], GatewayConfig]] = None
    deliverer: Any = None
    listen: bool = True
    install_signal_handlers: bool = True
    #: The metrics to count into (an intake worker's report them to the main process).
    metrics: Optional[GatewayMetrics] = None


def makeService(options: GatewayOptions, reactor: Any) -> "GatewayService":
    """What a gateway consists of, built in the order it starts; L{GatewayService} stops it in reverse."""
    config = options.config
    plugins = load_plugins(config)
    with plugins.undone_on_error():
        # One registry per gateway, handed to whoever counts.
        metrics = options.metrics if options.metrics is not None else GatewayMetrics()
        spool = build_spool(config, reactor)
        auth = build_auth(config.auth, config.state_dir, reactor=reactor, graph_config=config.graph)
        # Before delivery: [cluster] admission shares it, and relies on reconnections every ``retry``.
        redis = redis_service(config.redis, reactor, config.cluster.retry if config.cluster is not None else None)
        delivery = (given_delivery(options.deliverer) if options.deliverer is not None
                    else build_delivery(config, reactor, spool, auth, metrics, redis))
        observers = build_observers(config, reactor, delivery, metrics)
        queue = build_queue(config, reactor, spool.spool, delivery.deliverer, observers)
        listeners = build_listeners(config, reactor, spool.spool, auth, redis, metrics, listen=options.listen)
        spool.spool.judge_imports_with(listeners.import_judge)
        services = [*spool.services, *auth.services, *([redis] if redis is not None else []), *delivery.services,
                    observers.service, *queue.services, *listeners.services]  # in start order
        components = Components(
            spool=spool.spool, deliverer=delivery.deliverer, runner=queue.runner, listeners=list(listeners.parts),
            services=services, auth=auth, observers=list(observers.all), metrics=metrics, recent=observers.recent,
            health=delivery.health, configured_observers=list(observers.configured), redis=redis,
            plugin_search=plugins.search, broken_plugins=plugins.broken)
        status = build_status(config, components, reactor) if options.listen else None
        certificates = certificate_watch(components, reactor)
    return GatewayService(config, components, reactor, status=status, certificates=certificates,
                          config_loader=options.reload_config, install_signal_handlers=options.install_signal_handlers)


def build_components(config: GatewayConfig, reactor: Any, deliverer: Any = None, listen: bool = True,
                     metrics: Optional[GatewayMetrics] = None) -> Components:
    """
    The parts of a gateway without the service that runs them (``graphsmtp-config check``
    builds them to check a file; tests deliver into a fake ``deliverer``): exactly what
    L{makeService} builds.
    """
    options = GatewayOptions(config, deliverer=deliverer, listen=listen, install_signal_handlers=False, metrics=metrics)
    return makeService(options, reactor).components


class StartupFailure(SystemExit, Exception):
    """
    Start-up cannot go on (a listener cannot bind): exits with its one-line text.  A
    SystemExit so that ``twistd -n`` and ``twist`` print the line without a traceback, and an
    Exception so that daemonising ``twistd`` reports it through its status pipe: with a bare
    SystemExit the waiting parent never hears from the child and hangs for ever.
    """


class GatewayService(MultiService):
    """
    A built gateway (L{makeService}), started and stopped in a safe order, reloaded on SIGHUP.
    Children start in the order given: ``components.services``, the certificate watch, the
    status endpoint's pool and web service, then the listeners.
    """

    log = Logger()

    def __init__(self, config: GatewayConfig, components: Components, reactor: Any, *,
                 status: Optional[StatusServices] = None,
                 certificates: Optional[IService] = None, install_signal_handlers: bool = True,
                 config_loader: Optional[Callable[[], GatewayConfig]] = None, delivers: bool = True) -> None:
        super().__init__()
        #: False in an intake worker: the main process delivers, and says how (capture mode).
        self.delivers = delivers
        #: The configuration the gateway started with (what is bound, what runs); SIGHUP
        #: compares against it to say what needs a restart.
        self.config = config
        #: The configuration in effect for new sessions (changes on a successful SIGHUP).
        self.current_config = config
        #: Re-reads the configuration file for SIGHUP; None: SIGHUP reloads certificates only.
        self.config_loader = config_loader
        self.reactor = reactor
        self.components = components
        self.install_signal_handlers = install_signal_handlers
        self._previous_sighup: Any = None
        self._ports_bound = False
        for child in components.services:
            child.setServiceParent(self)
        if certificates is not None:
            certificates.setServiceParent(self)
        #: The status endpoint's listening service (None without ``[status] endpoint``).
        self.status: Optional[IService] = None
        if status is not None:
            status.pool.setServiceParent(self)  # started before the web service, stopped after it
            self.status = status.web
            status.web.setServiceParent(self)
        for part in components.listeners:
            if part.service is not None:  # None: built to be checked, not to listen
                part.service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Bind every port first (twistd does this before dropping privileges and before anything
        else starts).  A listener that cannot bind stops start-up: one line per failed endpoint
        and a non-zero exit (L{StartupFailure}), instead of Twisted's "Unhandled Error" and a gateway
        that runs on without its port while /healthz says ok.
        """
        self._ports_bound = True
        Service.privilegedStartService(self)
        binding = self._binding_services()
        failures: list[str] = []
        for child in self:
            if id(child) not in binding:
                child.privilegedStartService()
                continue
            # Raise a synchronous listen() failure here instead of logging it as unhandled.
            child._raiseSynchronously = True
            try:
                child.privilegedStartService()
            except Exception as e:
                failures.append(f"{binding[id(child)]} cannot listen: {_one_line(e)}")
        if failures:
            # SystemExit's text is the one line: twistd writes it to stderr, which it also
            # routes into the log (text or JSON), so it is never said twice.
            for child in self:
                port = getattr(child, "_waitingForPort", None)
                if id(child) in binding and port is not None:
                    port.addCallback(lambda p: p.stopListening() if p is not None else None)
                    port.addErrback(lambda _: None)
            raise StartupFailure("graphsmtp: " + "\ngraphsmtp: ".join(failures))

    def _binding_services(self) -> dict[int, str]:
        """The services that bind a port, by id, with the words that name them in an error."""
        binding = {id(part.service): f"listener {part.config.name} ({part.config.endpoint})"
                   for part in self.components.listeners}
        if self.status is not None:
            binding[id(self.status)] = f"status endpoint ({self.config.status.endpoint})"
        return binding

    def startService(self) -> None:
        if not self._ports_bound:
            # ``twist`` (unlike twistd) never calls privilegedStartService: bind here so that
            # a port that cannot bind stops start-up under it too.
            self.privilegedStartService()
        if self.delivers and self.config.deliverer == "capture":
            self.log.warn(
                "NO MICROSOFT GRAPH CREDENTIALS CONFIGURED: messages are delivered into the local "
                "capture outbox {outbox} and NOT sent anywhere. Configure [graph] to deliver for real.",
                outbox=self.config.capture.outbox,
            )
        for part in self.components.listeners:
            part.service.when_listening().addCallback(self._announce, part)
        if self.install_signal_handlers:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        super().startService()
        self.components.runner.ready.addErrback(self._recovery_failed)

    def _recovery_failed(self, failure: Any) -> Any:
        """
        Without a recovered spool nothing accepted would ever be delivered (or, with the spool
        locked by another gateway, not even stored): stop listening rather than answer 250.
        """
        self.log.critical(
            "THE SPOOL COULD NOT BE RECOVERED ({error}): graphsmtp stops accepting mail; fix the "
            "problem and restart", error=failure.getErrorMessage(),
        )
        stopping = [part.service.stopService() for part in self.components.listeners if part.service.running]
        return gatherResults(stopping, consumeErrors=True).addBoth(lambda _: failure)

    def _announce(self, port: Any, part: Any) -> None:
        if port is None:
            # An endpoint that failed after start-up had begun (not synchronously): the
            # gateway runs without this port and /healthz answers 503 until it is restarted.
            self.log.critical("listener {name} ({endpoint}) is not listening; restart graphsmtp",
                              name=part.config.name, endpoint=part.config.endpoint)
            return
        address = port.getHost()
        if not hasattr(address, "port"):  # the [local] UNIX socket: a path, not host and port
            self.log.info("listener {name} accepting SMTP on UNIX socket {path} (tls={tls}, auth={auth})",
                          name=part.config.name, path=_socket_path(address), tls=part.config.tls,
                          auth=part.config.auth)
            return
        self.log.info(
            "listener {name} accepting SMTP on {host} port {port} (tls={tls}, auth={auth})",
            name=part.config.name, host=getattr(address, "host", "?"), port=getattr(address, "port", "?"),
            tls=part.config.tls, auth=part.config.auth,
        )

    def _sighup(self, signum: int, frame: Any) -> None:
        # Signal handlers run between bytecodes of whatever the reactor was doing: hand the
        # work to the reactor instead of doing file I/O here.
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        SIGHUP: re-read the configuration file and swap in, for new sessions, everything that
        does not need a new socket (see L{gateway.reload}); then re-read TLS certificates.  A
        file that does not load or build keeps the running configuration, with one log line.
        """
        if self.config_loader is not None:
            from gateway.reload import apply_reload, prepare_reload

            try:
                new = self.config_loader()
                plan = prepare_reload(self.config, new, self.components, self.reactor)
            except Exception as e:
                self.log.error("SIGHUP: configuration NOT reloaded, still running the previous one: {error}",
                               error=_one_line(e))
                return
            apply_reload(plan, self.components)
            self.current_config = new
            self.log.info(
                "SIGHUP: configuration reloaded for new sessions (listeners {listeners}; {observers} observers)",
                listeners=", ".join(change.listener.name for change in plan.listeners) or "none",
                observers=len(plan.observers),
            )
            for note in plan.restart_needed:
                self.log.warn("SIGHUP: {change}: restart graphsmtp to apply it", change=note)
        else:
            self.log.info("SIGHUP: reloading certificates")
        for part in self.components.listeners:
            if part.tls is not None:
                part.tls.reload()

    @inlineCallbacks
    def stopService(self) -> Any:
        if self.install_signal_handlers and self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        self.running = 0
        listeners = list(self.components.listeners)
        # 1. Stop accepting connections and new transactions; close the sessions.
        yield self._stop_intake(listeners)
        # Their last replies (a 250 given during the stop, the 421) are only buffered yet: the
        # reactor's shutdown would drop them, so the stop ends once the sessions have gone.
        closing = sessions_closed([part.factory for part in listeners], self.reactor)
        # 2. Everything else, one at a time, in reverse start order (runner before pools).
        listener_services = {id(part.service) for part in listeners}
        yield self._stop_in_turn([s for s in reversed(list(self)) if id(s) not in listener_services])
        yield closing
        still_open = sum(len(part.factory.sessions) for part in listeners)  # some may have gone since
        if still_open:
            self.log.warn("{count} SMTP session(s) still closing after {limit}s (clients not reading); dropped",
                          count=still_open, limit=SESSION_FLUSH_LIMIT)
        self.log.info("graphsmtp stopped")

    @inlineCallbacks
    def _stop_intake(self, listeners: list[Any]) -> Any:
        """Stop listening, let transactions in DATA finish (bounded), then 421 to every session."""
        grace = self.config.queue.shutdown_grace
        for part in listeners:
            if part.service.running:
                yield maybeDeferred(part.service.stopService)
        drains = [part.factory.drain() for part in listeners]
        for d in drains:
            d.addTimeout(grace, self.reactor)
            try:
                yield d
            except Exception:
                self.log.warn("transactions still open after {grace}s; their clients will retry", grace=grace)
        for part in listeners:
            part.factory.close_sessions()

    @inlineCallbacks
    def _stop_in_turn(self, services: list[IService]) -> Any:
        for service in services:
            if service.running:
                try:
                    yield maybeDeferred(service.stopService)
                except Exception:
                    self.log.failure("stopping {service!r} failed", service=service)


def _socket_path(address: Any) -> str:
    name = getattr(address, "name", None)
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


__all__ = ["GatewayOptions", "GatewayService", "StartupFailure", "build_components", "makeService"]
