"""
TLS without Python callbacks, so the gateway runs under systemd's ``MemoryDenyWriteExecute=yes``
(or the kernel's ``prctl(PR_SET_MDWE)``).

Why: pyOpenSSL hands OpenSSL Python callbacks through cffi's ``ffi.callback()``, which needs a
page that is writable *and* executable.  cffi refuses on purpose to use libffi's alternative on
Linux (see the comment above ``CFFI_CHECK_FFI_CLOSURE_ALLOC`` in cffi's ``_cffi_backend.c``,
checked for cffi 2.1.1), so under MDWE every such callback raises ``MemoryError``.  Twisted
26.10 installs two of them by default:

- an ALPN selection callback on every server context (``setupForALPN``), even with no
  protocols to negotiate — SMTP negotiates none;
- a verify callback on every client connection (``ClientTLSOptions``) to check the server's
  host name.

This module avoids both without weakening anything: L{CallbackFreeContext} ignores the empty
ALPN selection (no ALPN is offered, exactly as before), and L{HostnameVerifyingPolicy} lets
OpenSSL itself check the host name (``X509_VERIFY_PARAM_set1_host``/``set1_ip``, the same check
curl and Python's ``ssl`` module use), so a wrong name or an untrusted chain still fails the
handshake.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class CallbackFreeContext(SSL.Context):
    """
    An ``SSL.Context`` on which Twisted's unconditional ALPN selection callback is a no-op.
    Nothing in the gateway negotiates an application protocol over TLS, so the callback would
    only ever answer "no overlap" — at the price of W+X memory.
    """

    def set_alpn_select_callback(self, callback: Any) -> None:
        return None


class CallbackFreeCertificateOptions(ssl.CertificateOptions):
    """``CertificateOptions`` whose contexts are L{CallbackFreeContext}s."""

    _contextFactory = CallbackFreeContext


@implementer(IOpenSSLClientConnectionCreator)
class HostnameVerifyingCreator:
    """
    Client connections to one host that OpenSSL verifies by itself: the chain against the
    context's trust roots and the certificate against ``hostname`` (DNS name or IP address).
    """

    def __init__(self, context: SSL.Context, hostname: str) -> None:
        self._context = context
        self._hostname = hostname
        try:
            self._ip: Optional[bytes] = ipaddress.ip_address(hostname).packed
        except ValueError:
            self._ip = None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)  # no callback
        lib = Binding.lib
        param = lib.SSL_get0_param(connection._ssl)
        if self._ip is not None:
            ok = lib.X509_VERIFY_PARAM_set1_ip(param, self._ip, len(self._ip))
        else:
            name = self._hostname.encode("idna")
            connection.set_tlsext_host_name(name)
            lib.X509_VERIFY_PARAM_set_hostflags(param, lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
            ok = lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
        if ok != 1:
            # Never connect unverified: a name OpenSSL cannot take is a failed connection.
            raise SSL.Error(f"cannot verify TLS host name {self._hostname!r}")
        return connection


@implementer(IPolicyForHTTPS)
class HostnameVerifyingPolicy:
    """
    ``BrowserLikePolicyForHTTPS`` without Python callbacks: trust ``trust_root`` (default: the
    platform's CA store), require TLS 1.2, verify the host name in OpenSSL.
    """

    def __init__(self, trust_root: Any = None) -> None:
        self._trust_root = trust_root if trust_root is not None else ssl.platformTrust()
        options = CallbackFreeCertificateOptions(trustRoot=self._trust_root, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        self._context = options.getContext()

    def creatorForNetloc(self, hostname: bytes | str, port: int) -> IOpenSSLClientConnectionCreator:
        if isinstance(hostname, bytes):
            hostname = hostname.decode("ascii")
        if not openssl_checks_host_names():
            # A pyOpenSSL/cryptography without these bindings: Twisted's own (callback) check,
            # which works everywhere except under MemoryDenyWriteExecute.
            return ssl.optionsForClientTLS(hostname, trustRoot=self._trust_root)
        return HostnameVerifyingCreator(self._context, hostname)


def openssl_checks_host_names() -> bool:
    """Whether the installed bindings let OpenSSL verify host names (see the module docstring)."""
    lib = Binding.lib
    return all(hasattr(lib, name) for name in (
        "SSL_get0_param", "X509_VERIFY_PARAM_set1_host", "X509_VERIFY_PARAM_set1_ip",
        "X509_VERIFY_PARAM_set_hostflags", "X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS",
    ))


__all__ = [
    "CallbackFreeContext", "CallbackFreeCertificateOptions", "HostnameVerifyingCreator",
    "HostnameVerifyingPolicy", "openssl_checks_host_names",
]
