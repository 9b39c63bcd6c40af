"""
Server-side TLS for one listener: hardened options built from PEM files, swappable at run time.

Why a source object rather than a fixed ``CertificateOptions``: certificates are renewed
(ACME, corporate PKI) while the gateway runs.  The SMTP factory asks ``server_options()`` for
every new connection/STARTTLS, so a successful ``reload()`` takes effect for the next client
while established sessions keep the context they shook hands with.  A failed reload keeps the
old certificate: an expiring certificate is better than a listener that cannot do TLS at all.

Hardening on top of Twisted's defaults (which already set no compression, server cipher
preference, no session tickets and TLS 1.2 minimum): forward-secret AEAD suites only, and no
renegotiation.

Old devices, on purpose: ``tls_min_version`` may go down to 1.0 for old printers.  OpenSSL 3
refuses TLS < 1.2 at its default security level, so such a listener runs at security level 0
(``@SECLEVEL=0``) with CBC suites and RSA key exchange suites (``AES128-SHA`` and friends, no
forward secrecy: what printers of that age offer) added *after* the forward-secret ones — with
server preference, a client that can do ECDHE still gets it — and start-up logs a warning
naming the listener.  RSA key exchange needs an RSA certificate (``graphsmtp-certs --key-type
rsa``); the warning says so when the listener's key is not RSA.

``tls_ciphers`` replaces the default suite list (TLS 1.2 and below; TLS 1.3 suites are
always OpenSSL's) with any OpenSSL cipher string; one OpenSSL cannot use is a start-up error.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Optional

import attrs
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.logger import Logger

from gateway.callback_free_tls import CallbackFreeCertificateOptions
from gateway.config.errors import ConfigError
from gateway.config.model import ListenerConfig

# Forward secrecy and AEAD only for TLS 1.2 (TLS 1.3 suites are all fine and set by OpenSSL).
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!PSK:!SRP"
# TLS 1.0/1.1 have no AEAD suites: old clients need ECDHE with CBC, and the oldest ones only
# know RSA key exchange (kRSA, no forward secrecy), offered last.  Never 3DES, RC4 or export.
LEGACY_CIPHERS = ("ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:kRSA+AESGCM:kRSA+AES"
                  ":!aNULL:!eNULL:!MD5:!DSS:!PSK:!SRP:!3DES:!RC4:!EXP")

_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1_0,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class HardenedCertificateOptions(CallbackFreeCertificateOptions):
    """
    ``CertificateOptions`` plus what it cannot express: renegotiation off and, for legacy
    listeners, the OpenSSL security level lowered so TLS 1.0/1.1 can actually be negotiated.
    """

    def __init__(self, *, cipher_string: str, legacy: bool, **kwargs: Any) -> None:
        super().__init__(acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(cipher_string), **kwargs)
        self._hardening_cipher_string = cipher_string
        self._legacy = legacy

    def getContext(self) -> SSL.Context:
        if self._context is None:
            ctx = super().getContext()
            ctx.set_options(SSL.OP_NO_RENEGOTIATION)
            if self._legacy and "@SECLEVEL" not in self._hardening_cipher_string:
                # The cipher list is where OpenSSL takes the security level from.
                ctx.set_cipher_list(self._hardening_cipher_string.encode("ascii") + b":@SECLEVEL=0")
        assert self._context is not None  # set by the getContext above
        return self._context


@attrs.frozen
class _FileStamp:
    """Identifies one version of a file, so a rename-into-place is noticed as well as an edit."""

    mtime_ns: int
    size: int
    inode: int


def _stamp(path: str) -> Optional[_FileStamp]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


class TLSLoadError(Exception):
    """A certificate or key could not be used; ``key`` names the setting, the text the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def load_server_options(listener: ListenerConfig) -> HardenedCertificateOptions:
    """
    Build options from the listener's ``tls_cert`` (leaf first, then any chain) and ``tls_key``
    (defaults to ``tls_cert`` for a combined PEM).  Raises L{TLSLoadError}; never includes key
    material in the message.
    """
    where = f"listener.{listener.name}"
    cert_key = f"{where}.tls_cert"
    key_key = f"{where}.tls_key" if listener.tls_key else cert_key
    cert_path = listener.tls_cert
    if not cert_path:
        raise TLSLoadError(cert_key, "is not set")
    key_path = listener.tls_key or cert_path

    cert_pem = _read(cert_path, cert_key)
    blocks = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise TLSLoadError(cert_key, f"{cert_path} contains no PEM certificate")
    try:
        certs = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    except crypto.Error:
        raise TLSLoadError(cert_key, f"{cert_path} contains a certificate that cannot be parsed") from None

    key_st = _stat(key_path, key_key)
    if key_st.st_mode & stat.S_IROTH:
        raise TLSLoadError(key_key, f"private key {key_path} is readable by everyone; chmod 600 (or 640 with a group) it")
    key_pem = _read(key_path, key_key)
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise TLSLoadError(key_key, f"{key_path} contains no usable unencrypted PEM private key") from None
    finally:
        del key_pem

    legacy = _VERSIONS[listener.tls_min_version] < ssl.TLSVersion.TLSv1_2
    ciphers = cipher_string(listener)
    _check_cipher_string(ciphers, f"{where}.tls_ciphers")
    try:
        options = HardenedCertificateOptions(
            privateKey=key,
            certificate=certs[0],
            extraCertChain=certs[1:],
            insecurelyLowerMinimumTo=_VERSIONS[listener.tls_min_version],
            cipher_string=ciphers,
            legacy=legacy,
        )
        # Build the context now: a key that does not match the certificate fails here, at
        # start-up or reload, instead of in the first client's handshake.
        options.getContext()
    except SSL.Error:
        raise TLSLoadError(key_key, f"private key {key_path} does not match the certificate in {cert_path}") from None
    except ValueError as e:
        raise TLSLoadError(cert_key, f"cannot build TLS options: {e}") from None
    return options


def cipher_string(listener: ListenerConfig) -> str:
    """The listener's ``tls_ciphers``, else the default for its ``tls_min_version``."""
    if listener.tls_ciphers:
        return listener.tls_ciphers
    return LEGACY_CIPHERS if _VERSIONS[listener.tls_min_version] < ssl.TLSVersion.TLSv1_2 else MODERN_CIPHERS


def _check_cipher_string(ciphers: str, key: str) -> None:
    """OpenSSL must be able to use at least one suite of ``ciphers`` (a typo selects none)."""
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise TLSLoadError(key, f"OpenSSL can use no cipher suite of {ciphers!r}") from None


def key_kind(listener: ListenerConfig) -> Optional[str]:
    """"RSA", "EC", ... for the listener's private key (read again: nothing of it is kept), or None."""
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, _read(listener.tls_key or listener.tls_cert or "", ""))
    except (TLSLoadError, crypto.Error):
        return None
    return {crypto.TYPE_RSA: "RSA", crypto.TYPE_EC: "EC", crypto.TYPE_DSA: "DSA"}.get(key.type(), "other")


def _stat(path: str, key: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise TLSLoadError(key, f"cannot read {path}: {e.strerror}") from None


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSLoadError(key, f"cannot read {path}: {e.strerror}") from None


class TLSContextSource:
    """
    The TLS settings of one listener, reloadable.

    Construct at start-up: a missing, unreadable or mismatched certificate/key raises
    L{ConfigError} naming the listener setting and path.  Then ``server_options()`` for each
    new connection, ``reload()`` on SIGHUP and ``check_for_changes()`` from a timer.
    """

    log = Logger()

    def __init__(self, listener: ListenerConfig, log: Optional[Logger] = None) -> None:
        if log is not None:
            self.log = log
        self.listener = listener
        self._paths = tuple(p for p in (listener.tls_cert, listener.tls_key) if p)
        self._stamps = self._current_stamps()
        try:
            self._options = load_server_options(listener)
        except TLSLoadError as e:
            raise ConfigError(e.key, e.problem) from None
        self.reloads = 0
        self.failed_reloads = 0
        if self.legacy:
            kind = key_kind(listener)
            self.log.warn(
                "listener {listener} allows TLS {version}: old TLS versions, CBC ciphers and RSA key "
                "exchange (no forward secrecy) are enabled for this listener only, at OpenSSL security "
                "level 0 (tls_min_version, ciphers {ciphers}); move its clients to TLS 1.2{advice}",
                listener=listener.name, version=listener.tls_min_version, ciphers=cipher_string(listener),
                advice="" if kind in ("RSA", None) else (
                    f". Its certificate has an {kind} key, so clients offering only RSA suites cannot "
                    "connect: use an RSA certificate (graphsmtp-certs --key-type rsa)"),
            )

    @property
    def legacy(self) -> bool:
        return _VERSIONS[self.listener.tls_min_version] < ssl.TLSVersion.TLSv1_2

    def server_options(self) -> ssl.CertificateOptions:
        """The options for the next TLS handshake."""
        return self._options

    def reload(self) -> bool:
        """
        Re-read the certificate and key.  On success new connections use them; on failure the
        old ones stay in use and the problem is logged.  Returns whether the new files are in use.
        """
        stamps = self._current_stamps()
        try:
            options = load_server_options(self.listener)
        except TLSLoadError as e:
            self.failed_reloads += 1
            # Remember the stamps anyway: the timer must not retry (and log) every tick until
            # the files change again.
            self._stamps = stamps
            self.log.error(
                "listener {listener}: TLS reload failed, still using the previous certificate: {problem}",
                listener=self.listener.name, problem=str(e),
            )
            return False
        self._options = options
        self._stamps = stamps
        self.reloads += 1
        self.log.info("listener {listener}: TLS certificate reloaded from {path}", listener=self.listener.name, path=self.listener.tls_cert)
        return True

    def adopt(self, other: "TLSContextSource") -> None:
        """
        Take over ``other``'s settings and loaded certificate (a SIGHUP that changed tls_cert,
        tls_key or tls_min_version): this object stays the one the listener's endpoint holds.
        """
        self.listener, self._paths, self._stamps, self._options = other.listener, other._paths, other._stamps, other._options

    def check_for_changes(self) -> bool:
        """
        For a periodic timer: reload when the certificate or key file changed since the last
        load.  Never raises (a raising TimerService stops for good).  Returns whether it reloaded.
        """
        try:
            if self._current_stamps() == self._stamps:
                return False
            return self.reload()
        except Exception:
            self.log.failure("listener {listener}: checking TLS files failed", listener=self.listener.name)
            return False

    def _current_stamps(self) -> tuple[Optional[_FileStamp], ...]:
        return tuple(_stamp(p) for p in self._paths)


__all__ = [
    "TLSContextSource", "HardenedCertificateOptions", "load_server_options", "TLSLoadError",
    "MODERN_CIPHERS", "LEGACY_CIPHERS", "cipher_string", "key_kind",
]
