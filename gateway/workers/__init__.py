"""
Intake worker processes: ``[gateway] workers = N`` (L{gateway.config.workers}).

The main process binds the SMTP listeners, recovers the spool and runs the queue runner, the
deliverer, the ``[local]`` socket and the status endpoint.  N worker processes adopt the
listening sockets and run SMTP intake (TLS, AUTH, policies, the spool writer) into the same
spool directory; the kernel hands each new connection to one of them.

- L{gateway.workers.supervisor}: the main process's side (spawn, restart, signals, stop).
- L{gateway.workers.child}: the worker process.
- L{gateway.workers.sockets}: passing and adopting the listening sockets.
- L{gateway.workers.channel}: commit notices and log events from worker to main.
- L{gateway.workers.spool_sweep}: clean-up after a worker ended.
"""
