"""
Loopback ports for test servers that must be told their port before they start: Redis and
Sentinel (their configuration names it), the cluster rig's gateways (haproxy's configuration
names them, and a node restarts on the same port).  Everything else listens on port 0 and
reads back the port it got.

Why not "bind port 0, read the port, close": the kernel picks every port 0 bind *and* the
local port of every outgoing connection from one range (``ip_local_port_range``), so between
the close and the server's own bind, a test running in parallel (``trial --jobs``) can take the
very port.  The suite failed that way ("Address already in use").  So ports are picked at
random *below* that range, where the kernel never picks one by itself: only another explicit
pick can collide, each pick is checked by binding it before it is handed out, and one
L{PortPicker} never hands out the same port twice (a rig picks several before any is bound).

Pickers in other processes (the other ``trial --jobs`` worker) are kept off a port too: a port
handed out stays *claimed* until its picker is closed, by a socket bound to a name of its own in
Linux's abstract socket namespace (one name per port; a name is bound once in a network
namespace, and freed when its socket closes, also when its process dies), and a port another
picker has claimed is passed over.  Without that, the other worker could pick a port this one
had handed out and not yet bound, and bind it first: a cluster test's gateway failed to start
that way ("Address already in use") in a fresh clone's CI run.  Off Linux there is no claim.
"""

from __future__ import annotations

import secrets
import socket
import sys
from typing import Any, Callable, Optional

#: Picked ports start here: above the well-known services a test machine may run.
FIRST_PORT = 20000
_PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_ATTEMPTS = 50


def ephemeral_start(path: str = _PORT_RANGE_FILE) -> int:
    """The first port the kernel hands out by itself (32768 when the file cannot be read)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be bound right now (no listener, no connection lingering on it)."""
    with socket.socket(_family(host)) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def claim(port: int) -> Optional[socket.socket]:
    """
    A claim on ``port`` against every other picker on this machine's network namespace (a
    socket; closing it ends the claim), or None when another holds one.  Off Linux, an
    unbound socket: it claims nothing.
    """
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if not sys.platform.startswith("linux"):
        return holder
    try:
        holder.bind(f"\0graphsmtp-test-port-{port}")
    except OSError:
        holder.close()
        return None
    return holder


def kernel_port(host: str = "127.0.0.1") -> int:
    """A port the kernel picks (port 0): the fallback where no range below its own is left."""
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PortPicker:
    """
    Hands out ports on ``host`` that are free when picked, that the kernel will not hand to
    anyone else on its own, that this picker has not handed out before, and that no other
    picker has claimed; each stays claimed until L{close} (a test: L{ports_for}).
    ``pick(n)`` returns a number below ``n`` (random; a test passes its own); ``start()`` is
    where the kernel's own range begins.
    """

    def __init__(self, host: str = "127.0.0.1", start: Callable[[], int] = ephemeral_start,
                 pick: Callable[[int], int] = secrets.randbelow) -> None:
        self.host = host
        self._start = start
        self._pick = pick
        self._given: set[int] = set()
        self._claims: list[socket.socket] = []

    def port(self) -> int:
        count = self._start() - FIRST_PORT
        chosen = None
        if count >= 100:
            for _ in range(_ATTEMPTS):
                candidate = FIRST_PORT + self._pick(count)
                if candidate in self._given:
                    continue
                held = claim(candidate)
                if held is None:
                    continue  # another picker's, perhaps not bound yet
                if is_free(candidate, self.host):
                    self._claims.append(held)
                    chosen = candidate
                    break
                held.close()
        while chosen is None or chosen in self._given:
            chosen = kernel_port(self.host)
        self._given.add(chosen)
        return chosen

    def close(self) -> None:
        """End the claims on the ports handed out (their servers have bound them, or are gone)."""
        claims, self._claims = self._claims, []
        for held in claims:
            held.close()


def ports_for(case: Any, host: str = "127.0.0.1") -> PortPicker:
    """A L{PortPicker} whose claims last until ``case``'s cleanup (its servers bind them later)."""
    picker = PortPicker(host)
    case.addCleanup(picker.close)
    return picker


def unused_port(host: str = "127.0.0.1") -> int:
    """
    One port as L{PortPicker} picks them, for a test that binds it at once: its claim ends
    here.  A test that binds it later keeps a L{PortPicker} until then.
    """
    picker = PortPicker(host)
    try:
        return picker.port()
    finally:
        picker.close()


__all__ = ["FIRST_PORT", "PortPicker", "claim", "ephemeral_start", "is_free", "kernel_port", "ports_for",
           "unused_port"]
