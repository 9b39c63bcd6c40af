"""
Shared helpers for the TLS/security tests: a complete TLS handshake between a Python ``ssl``
client and a pyOpenSSL server context over memory BIOs (real OpenSSL on both sides, no sockets),
and listener configurations pointing at a throw-away CA's certificates.
"""

from __future__ import annotations

import ssl
import warnings
from typing import Optional

from OpenSSL import SSL

from gateway.config.model import ListenerConfig


def client_context(ca_path: Optional[str], version: Optional[ssl.TLSVersion] = None, ciphers: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    """A client that can speak any version it is told to (old printers included)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_path:
        ctx.load_verify_locations(ca_path)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
    ctx.set_ciphers(ciphers)
    return ctx


def memory_handshake(server_options, client_ctx: ssl.SSLContext, server_hostname: str = "localhost"):
    """
    Run one handshake; return ``(version, cipher_name, peer_cert_der)`` or raise
    ``ssl.SSLError``/``SSL.Error`` from whichever side refused.
    """
    server = SSL.Connection(server_options.getContext(), None)
    server.set_accept_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    for _ in range(20):
        try:
            client.do_handshake()
            return client.version(), client.cipher()[0], client.getpeercert(binary_form=True)
        except ssl.SSLWantReadError:
            pass
        data = outgoing.read()
        if data:
            server.bio_write(data)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            incoming.write(server.bio_read(65536))
        except SSL.WantReadError:
            pass
    raise AssertionError("handshake did not finish")


def tls_listener(cert, name: str = "submission", **kwargs) -> ListenerConfig:
    """A STARTTLS listener using an issued test certificate."""
    values = dict(name=name, endpoint="tcp:0:interface=127.0.0.1", tls="starttls", tls_cert=cert.cert_path, tls_key=cert.key_path)
    values.update(kwargs)
    return ListenerConfig(**values)
