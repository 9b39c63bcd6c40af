"""
Who is at the other end: a peer's address as text, whether it lies in trusted networks, and
whether a PROXY header's address is an address at all.  Used by the session, the factory (per
client limits) and the PROXY front (which peers may send a header).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable


def peer_address(peer: Any) -> tuple[str, int]:
    """``(host, port)`` of an IAddress; UNIX sockets and oddities give ``(str(peer), 0)``."""
    host = getattr(peer, "host", None)
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return str(peer), 0
    port = getattr(peer, "port", 0)
    return host, port if isinstance(port, int) else 0


def is_ip_literal(address: str) -> bool:
    """An IPv4 or IPv6 address and nothing else (a zone id may hold any text)."""
    if "%" in address:
        return False
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def is_trusted(address: str, networks: Iterable[Any]) -> bool:
    """Whether ``address`` lies in one of ``networks`` (IPv4-mapped IPv6 counts as IPv4)."""
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


__all__ = ["peer_address", "is_ip_literal", "is_trusted"]
